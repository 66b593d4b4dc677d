"""The checked-in protobuf module matches proto/metadata.proto, and the contract's shape."""

from __future__ import annotations

from metacollector.proto import generate
from metacollector.proto import metadata_pb2 as pb


def test_generated_module_is_fresh() -> None:
    assert generate.stale_outputs() == [], "run: python -m metacollector.proto.generate"


def test_wire_contract_fields() -> None:
    fields = {f.name: (f.number, f.type, f.has_presence) for f in pb.Event.DESCRIPTOR.fields}
    string, message = 9, 11
    assert fields == {
        "reason": (1, string, False),
        "uid": (2, string, False),
        "kind": (3, string, False),
        "meta": (4, string, True),
        "spec": (5, string, True),
        "status": (6, string, True),
        "refs": (7, message, True),
    }
    selector = {f.name: f.number for f in pb.Selector.DESCRIPTOR.fields}
    assert selector == {"nodeName": 1, "resourceKinds": 2}
    service = pb.DESCRIPTOR.services_by_name["Metadata"]
    watch = service.methods_by_name["Watch"]
    assert watch.input_type.name == "Selector" and watch.output_type.name == "Event"
    assert watch.server_streaming and not watch.client_streaming
    assert pb.DESCRIPTOR.package == "metadata"
