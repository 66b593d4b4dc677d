"""Byte-exact rendering of every kind (SPEC section 1)."""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from metacollector.model import Metadata, ObjectMeta, Pod, PodStatus
from metacollector.proto import metadata_pb2 as pb
from metacollector.render import (
    CREATE_PREFIX,
    UPDATE_PREFIX,
    delete_message,
    render_body,
    render_meta,
    render_refs,
    render_status,
)
from tests.support import builders as b


def test_pod_meta_status_refs_exact() -> None:
    p = b.pod(
        "web-7d9f-x2x9z",
        "5eae",
        labels={"app": "web", "pod-template-hash": "7d9f"},
        generate_name="web-7d9f-",
        ip="10.16.1.2",
        owners=[b.owner("ReplicaSet", "8be7")],
    )
    assert render_meta("Pod", p) == (
        b'{"generateName":"web-7d9f-","labels":{"app":"web","pod-template-hash":"7d9f"},'
        b'"name":"web-7d9f-x2x9z","namespace":"shop","uid":"5eae"}'
    )
    assert render_status(p) == b'{"podIP":"10.16.1.2"}'
    refs = (
        ("Deployment", ("e56c",)),
        ("Namespace", ("c51d",)),
        ("ReplicaSet", ("8be7",)),
        ("Service", ("b2af",)),
    )
    ev = pb.Event.FromString(CREATE_PREFIX + render_body("Pod", p, render_refs(refs)))
    assert ev.reason == "Create" and ev.uid == "5eae" and ev.kind == "Pod"
    assert not ev.HasField("spec")
    assert {k: list(v.list) for k, v in ev.refs.resources.items()} == {
        "Deployment": ["e56c"],
        "Namespace": ["c51d"],
        "ReplicaSet": ["8be7"],
        "Service": ["b2af"],
    }


def test_status_empty_before_ip_and_meta_omits_empty_fields() -> None:
    p = b.pod("bare", "u1")
    assert render_status(p) == b"{}"
    assert render_meta("Pod", p) == b'{"name":"bare","namespace":"shop","uid":"u1"}'


def test_meta_matches_stdlib_json_for_every_kind() -> None:
    labels = {"app.kubernetes.io/name": "web", "a": "1", "tier": "front-end_2.x"}
    objs = {
        "Namespace": b.namespace("shop", "ns1", labels=labels),
        "Deployment": b.metadata_only("Deployment", "web", "d1", "shop", labels),
        "ReplicaSet": b.metadata_only(
            "ReplicaSet", "web-1", "r1", "shop", labels, [b.owner("Deployment", "d1")]
        ),
        "DaemonSet": b.metadata_only("DaemonSet", "agent", "ds1", "kube-system", labels),
        "ReplicationController": b.metadata_only("ReplicationController", "rc", "rc1", "shop"),
        "Service": b.service("web", "s1", selector={"app": "web"}, labels=labels),
    }
    for kind, obj in objs.items():
        doc = {"name": obj.metadata.name, "uid": obj.metadata.uid}
        if obj.metadata.labels:
            doc["labels"] = obj.metadata.labels
        if kind != "Namespace":
            doc["namespace"] = obj.metadata.namespace
        expected = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        assert render_meta(kind, obj) == expected, kind
        ev = pb.Event.FromString(UPDATE_PREFIX + render_body(kind, obj, None))
        assert ev.reason == "Update" and ev.kind == kind
        assert not ev.HasField("status") and not ev.HasField("refs") and not ev.HasField("spec")
    assert b"annotations" not in render_meta("Namespace", objs["Namespace"])
    assert b"ownerReferences" not in render_meta("ReplicaSet", objs["ReplicaSet"])


def test_delete_carries_only_reason_uid_kind() -> None:
    ev = pb.Event.FromString(delete_message("Service", "s1"))
    assert ev.reason == "Delete" and ev.uid == "s1" and ev.kind == "Service"
    for name in ("meta", "spec", "status", "refs"):
        assert not ev.HasField(name)


def test_pod_without_any_ref_still_has_refs() -> None:
    ev = pb.Event.FromString(
        render_body("Pod", b.pod("p", "u"), render_refs((("Namespace", ()), ("Service", ()))))
    )
    assert ev.HasField("refs")
    assert set(ev.refs.resources) == {"Namespace", "Service"}


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_long_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=100, max_size=3000)


# UIDs of one length, as real ones are (the one-join fast path of render._list), ASCII or not.
_same_length = st.integers(0, 130).flatmap(
    lambda n: st.lists(
        st.text(alphabet=st.characters(max_codepoint=127), min_size=n, max_size=n)
        | st.text(alphabet=st.characters(codec="utf-8"), min_size=n, max_size=n),
        max_size=60,
    )
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["Pod", "Namespace", "Service", "ReplicaSet"]),
    uid=_text,
    labels=st.dictionaries(_text, st.one_of(_text, _long_text), max_size=4),
    ip=_text,
    refs=st.dictionaries(
        st.text(min_size=1, max_size=30),
        st.one_of(st.lists(st.one_of(_text, _long_text), max_size=60), _same_length),
    ),
)
@example(kind="Pod", uid="", labels={}, ip="", refs={"0": [], "00": []})  # a key prefixing one
def test_hand_encoding_equals_upb_deterministic_serialization(
    kind: str, uid: str, labels: dict[str, str], ip: str, refs: dict[str, list[str]]
) -> None:
    """The hand-written encoder is byte-identical to protobuf's own, for any strings and sizes."""
    if kind == "Pod":
        obj: object = b.pod("p", uid, labels=labels, ip=ip)
    elif kind == "Service":
        obj = b.service("s", uid, selector=None, labels=labels)
    elif kind == "Namespace":
        obj = b.namespace("n", uid, labels=labels)
    else:
        obj = b.metadata_only(kind, "r", uid, "shop", labels)
    # upb writes map keys in byte order but a key before any key it is a prefix of ("00" before
    # "0"); no kind name is a prefix of another, so for real refs that is plain sorted order.
    sorted_refs = tuple(
        sorted(((k, tuple(v)) for k, v in refs.items()), key=lambda kv: kv[0].encode() + b"\xff")
    )
    expected = pb.Event(uid=uid, kind=kind, meta=render_meta(kind, obj).decode())  # type: ignore[arg-type]
    if kind == "Pod":
        expected.status = render_status(obj).decode()  # type: ignore[arg-type]
        expected.refs.SetInParent()
        for ref_kind, uids in sorted_refs:
            expected.refs.resources[ref_kind].list.extend(uids)
    body = render_body(kind, obj, render_refs(sorted_refs) if kind == "Pod" else None)  # type: ignore[arg-type]
    assert body == expected.SerializeToString(deterministic=True)
    for reason, prefix in (("Create", CREATE_PREFIX), ("Update", UPDATE_PREFIX)):
        assert prefix == pb.Event(reason=reason).SerializeToString()
    assert delete_message(kind, uid) == (
        pb.Event(reason="Delete", uid=uid, kind=kind).SerializeToString(deterministic=True)
    )


# UIDs of one length, as real ones are (the one-join fast path of render._list), ASCII or not.
_same_length = st.integers(0, 130).flatmap(
    lambda n: st.lists(
        st.text(
            alphabet=st.characters(
                max_codepoint=st.sampled_from([127, 0x10FFFF]).example() if False else 127
            ),
            min_size=n,
            max_size=n,
        )
        | st.text(alphabet=st.characters(codec="utf-8"), min_size=n, max_size=n),
        max_size=60,
    )
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["Pod", "Namespace", "Service", "ReplicaSet"]),
    name=_text,
    generate_name=_text,
    uid=_text,
    labels=st.one_of(st.none(), st.dictionaries(_text, _text, max_size=4)),
    ip=_text,
)
def test_meta_and_status_equal_stdlib_json_for_any_strings(
    kind: str, name: str, generate_name: str, uid: str, labels: dict[str, str] | None, ip: str
) -> None:
    """meta/status are compact sorted JSON as the standard library writes it (SPEC section 1):
    empty generateName and labels left out, namespace only for namespaced kinds."""
    meta = ObjectMeta(
        name=name, namespace="shop", uid=uid, generateName=generate_name, labels=labels
    )
    obj = Pod(meta, status=PodStatus(ip)) if kind == "Pod" else Metadata(meta)
    doc: dict[str, object] = {"name": name, "uid": uid}
    if generate_name:
        doc["generateName"] = generate_name
    if labels:
        doc["labels"] = labels
    if kind != "Namespace":
        doc["namespace"] = "shop"
    assert render_meta(kind, obj) == _stdlib_json(doc)
    if isinstance(obj, Pod):
        assert render_status(obj) == _stdlib_json({"podIP": ip} if ip else {})


def _stdlib_json(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
