"""Convergence (SPEC section 2) as a property: random cluster histories, subscribers joining and
leaving, mailboxes drained at random moments with random budgets; at the end every subscriber's
table equals the naive oracle's view(node), and no stream rule was broken on the way."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metacollector import state
from metacollector.model import KINDS, Object
from metacollector.proto import metadata_pb2 as pb
from tests.core import builders as b
from tests.core import oracle
from tests.core.harness import Core, Subscriber

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
        ["Pod", "Namespace", "Deployment", "Service", "ReplicaSet", "ReplicaController"],
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

change = st.tuples(st.just("change"), st.one_of(pod_change(), other_change()))
step = st.one_of(
    change,
    change,
    change,
    st.tuples(st.just("subscribe"), st.tuples(st.sampled_from([*NODES[:3], "nx"]), kind_sets)),
    st.tuples(st.just("unsubscribe"), st.integers(0, 20)),
    st.tuples(st.just("drain"), st.tuples(st.integers(0, 20), st.sampled_from([1, 200, 1 << 20]))),
    st.tuples(st.just("drain_all"), st.none()),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(step, min_size=10, max_size=80),
    st.lists(st.tuples(st.just("change"), other_change()), max_size=6),
)
def test_every_subscriber_converges_to_its_view(
    steps: list[tuple[str, Any]], tail: list[tuple[str, Any]]
) -> None:
    run_history(steps, tail)


# Many Services over few label pairs: pods selected by several Services at once, selectors of
# two items, Services re-selecting; with state._SMALL at 1 every pod's Services are a set.
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


wide_change = st.tuples(st.just("change"), st.one_of(wide_pod_change(), wide_service_change()))
wide_step = st.one_of(
    wide_change,
    wide_change,
    wide_change,
    st.tuples(st.just("drain"), st.tuples(st.integers(0, 20), st.sampled_from([1, 1 << 20]))),
)


@pytest.mark.parametrize("small", [1, 8])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(wide_step, min_size=10, max_size=80),
    st.lists(st.tuples(st.just("change"), wide_service_change()), max_size=6),
)
def test_many_services_over_shared_labels_converge(
    small: int, steps: list[tuple[str, Any]], tail: list[tuple[str, Any]]
) -> None:
    with patch.object(state, "_SMALL", small):
        run_history([("change", ("ADDED", "Namespace", b.namespace("a", "ns-a"))), *steps], tail)


def run_history(steps: list[tuple[str, Any]], tail: list[tuple[str, Any]]) -> None:
    core = Core()
    # Subscribers present from the start see every change after their sync; more join later.
    subs: list[Subscriber] = [core.subscribe(node) for node in NODES[:3]]
    # The tail changes only non-pod objects, so stale derived pod state is not papered over.
    for action, arg in [*steps, ("drain_all", None), *tail]:
        if action == "change":
            change_type, kind, obj = arg
            core.apply(change_type, kind, obj)
        elif action == "subscribe":
            subs.append(core.subscribe(arg[0], arg[1]))
        elif action == "unsubscribe" and subs:
            assert core.subs is not None
            core.subs.unsubscribe(subs.pop(arg % len(subs)).mailbox)
        elif action == "drain" and subs:
            index, budget = arg
            sub = subs[index % len(subs)]
            sub_events = sub.mailbox.take(core.reducer.state, budget)
            for sent in sub_events:
                sub.apply(pb.Event.FromString(sent.message))
        elif action == "drain_all":
            for sub in subs:
                core.drain(sub)
    for sub in subs:
        core.drain(sub)
        expected = oracle.view(core.reducer.state.by_kind(), sub.mailbox.node, sub.mailbox.kinds)
        assert sub.table == expected
        assert core.drain(sub) == []  # quiet cluster: nothing more, no spurious Updates
