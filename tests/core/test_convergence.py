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
from metacollector.proto import metadata_pb2 as pb
from tests.support import builders as b
from tests.support import oracle
from tests.support.harness import Core, Subscriber
from tests.support.strategies import (
    NODES,
    kind_sets,
    other_change,
    pod_change,
    wide_pod_change,
    wide_service_change,
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


# Many Services over few label pairs (tests/support/strategies.py); with state._SMALL at 1
# every pod's Services are a set.
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
    assert_chains_shared(core.reducer.state)


def assert_chains_shared(cluster: state.ClusterState) -> None:
    """Every pod holds the shared copy of its owner chain, and the table holds exactly the
    chains live pods have, each counted once per pod (consumes the table: call it last)."""
    live = [(entry.owner_refs, entry.owner_keys) for entry in cluster.pods.values()]
    assert len(cluster.chains) == len(set(live))
    for refs, keys in live:
        shared = cluster.chains.acquire((refs, keys))
        assert shared[0] is refs and shared[1] is keys
        cluster.chains.release(shared)
    for chain in live:
        cluster.chains.release(chain)
    assert len(cluster.chains) == 0
