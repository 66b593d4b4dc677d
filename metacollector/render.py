"""Resource -> wire Event (SPEC section 1): meta/status JSON byte-exact, refs, protobuf bytes.

An event is rendered once per object version as a *body* (every Event field but ``reason``);
the message for a subscriber is ``reason`` prefix + body. Protobuf allows fields in any order,
so the concatenation is a valid Event, and the body bytes are shared by every subscriber.
"""

from __future__ import annotations

from typing import Final

import msgspec

from metacollector.model import CLUSTER_SCOPED, Object, Pod
from metacollector.proto import metadata_pb2 as pb

Refs = tuple[tuple[str, tuple[str, ...]], ...]  # (kind, uids) pairs, kinds sorted

_json = msgspec.json.Encoder(order="sorted")


def render_meta(kind: str, obj: Object) -> bytes:
    """The ``meta`` JSON: generateName, labels (when non-empty), name, namespace, uid; sorted."""
    m = obj.metadata
    meta: dict[str, object] = {"name": m.name, "uid": m.uid}
    if m.generateName:
        meta["generateName"] = m.generateName
    if m.labels:
        meta["labels"] = m.labels
    if kind not in CLUSTER_SCOPED:
        meta["namespace"] = m.namespace
    return _json.encode(meta)


def render_status(pod: Pod) -> bytes:
    """The ``status`` JSON of a pod: ``{"podIP":...}`` or ``{}`` before an IP is assigned."""
    return _json.encode({"podIP": pod.status.podIP} if pod.status.podIP else {})


def render_body(kind: str, obj: Object, refs: Refs | None) -> bytes:
    """Serialized Event without ``reason``: what Create and Update of this version share."""
    event = pb.Event(uid=obj.metadata.uid, kind=kind, meta=render_meta(kind, obj).decode())
    if isinstance(obj, Pod):
        event.status = render_status(obj).decode()
        event.refs.SetInParent()
        resources = event.refs.resources
        for ref_kind, uids in refs or ():
            resources[ref_kind].list.extend(uids)
    return event.SerializeToString(deterministic=True)


def _reason_prefix(reason: str) -> bytes:
    return pb.Event(reason=reason).SerializeToString()


CREATE_PREFIX: Final = _reason_prefix("Create")
UPDATE_PREFIX: Final = _reason_prefix("Update")


def delete_message(kind: str, uid: str) -> bytes:
    """A Delete carries only reason, uid and kind."""
    return pb.Event(reason="Delete", uid=uid, kind=kind).SerializeToString()
