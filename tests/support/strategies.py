"""Hypothesis strategies of cluster changes for the reducer's property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from metacollector.model import KINDS, Object
from metacollector.subscriptions import FALCO_KINDS
from tests.support import builders as b

NODES = ["n1", "n2", "n3", ""]
POD_NODES = st.sampled_from(["n1", "n1", "n2", "n2", "n3", ""])
NAMESPACES = ["a", "b"]
LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)
SELECTOR = st.dictionaries(
    st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), min_size=1, max_size=1
)
OWNER_KINDS = ["ReplicaSet", "ReplicaSet", "DaemonSet", "ReplicationController", "Job", "Node"]
uid = st.integers(0, 1)


def owners(kind: str, i: int) -> list[dict[str, Any]]:
    return [b.owner(kind, f"{kind.lower()}-{i}")]


@st.composite
def pod_change(draw: st.DrawFn) -> tuple[str, str, Object]:
    i = draw(st.integers(0, 4))
    owner = draw(st.one_of(st.none(), st.tuples(st.sampled_from(OWNER_KINDS), uid)))
    obj = b.pod(
        f"p{i}",
        f"pod-{i}",
        namespace="a" if i < 4 else "b",  # a uid never changes namespace
        node=draw(POD_NODES),
        labels=draw(LABELS),
        owners=owners(*owner) if owner else None,
        ip=draw(st.sampled_from(["", "10.0.0.1", "10.0.0.2"])),
        rv=str(draw(st.integers(1, 9))),
    )
    return draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED"])), "Pod", obj


@st.composite
def other_change(draw: st.DrawFn) -> tuple[str, str, Object]:
    kind = draw(st.sampled_from([k for k in KINDS if k != "Pod"]))
    i = draw(uid)
    ns = NAMESPACES[i % 2] if kind == "Service" else "a"  # a uid never changes namespace
    labels = draw(LABELS)
    if kind == "Namespace":
        # two uids per name: a namespace deleted and recreated gets a new uid
        obj = b.namespace(NAMESPACES[i % 2], f"namespace-{i}", labels)
    elif kind == "Service":
        obj = b.service(
            f"s{i}",
            f"service-{i}",
            ns,
            selector=draw(st.one_of(st.just({}), SELECTOR)),
            labels=labels,
        )
    else:
        own = None
        if kind == "ReplicaSet" and draw(st.booleans()):
            own = owners(draw(st.sampled_from(["Deployment", "StatefulSet"])), draw(uid))
        obj = b.metadata_only(kind, f"{kind.lower()}{i}", f"{kind.lower()}-{i}", ns, labels, own)
    return draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED"])), kind, obj


kind_sets = st.sampled_from(
    [
        list(FALCO_KINDS),
        [
            "Pod",
            "Namespace",
            "Deployment",
            "Service",
            "ReplicaSet",
            "ReplicationController",
            "DaemonSet",
        ],
        ["Pod"],
        ["Service", "Deployment"],
    ]
)


# Many Services over few label pairs: pods selected by several Services at once, selectors of
# two items, Services re-selecting.
WIDE_LABELS = st.dictionaries(
    st.sampled_from(["app", "tier", "zone"]), st.sampled_from(["x", "y"]), max_size=3
)


@st.composite
def wide_pod_change(draw: st.DrawFn) -> tuple[str, str, Object]:
    i = draw(st.integers(0, 5))
    obj = b.pod(
        f"p{i}",
        f"pod-{i}",
        namespace="a",
        node=draw(POD_NODES),
        labels=draw(WIDE_LABELS),
        rv=str(draw(st.integers(1, 9))),
    )
    return draw(st.sampled_from(["ADDED", "MODIFIED", "MODIFIED", "DELETED"])), "Pod", obj


@st.composite
def wide_service_change(draw: st.DrawFn) -> tuple[str, str, Object]:
    i = draw(st.integers(0, 5))
    selector = draw(
        st.dictionaries(
            st.sampled_from(["app", "tier", "zone"]), st.sampled_from(["x", "y"]), max_size=2
        )
    )
    obj = b.service(f"s{i}", f"service-{i}", "a", selector=selector)
    return draw(st.sampled_from(["ADDED", "MODIFIED", "MODIFIED", "DELETED"])), "Service", obj
