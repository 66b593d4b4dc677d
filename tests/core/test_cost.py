"""The reducer's cost grows with what a change changes, never with what it leaves alone
(issue 18). Counted, not timed: the state's operation counter (``ClusterState.ops``: candidates
checked, pods and keys moved) and, as a check that does not trust that counter, the number of
Python bytecode instructions the reducer executes (``f_trace_opcodes``).

The case that froze the collector: Services in one namespace all selecting the same pods. Each
Service added re-compared every selected pod's Service list item by item, so the k-th Service
cost O(m * k); now it costs O(m), and a pod's sorted Service refs are rendered once, when its
event is next needed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any
from unittest.mock import patch

from metacollector import render, state
from tests.support import builders as b
from tests.support.harness import Core

PODS = 20  # pods every Service selects, on four nodes
SERVICES = 2000


def selected_cluster() -> Core:
    core = Core()
    core.apply("ADDED", "Namespace", b.namespace("shop", "ns-shop"))
    for i in range(PODS):
        core.apply(
            "ADDED",
            "Pod",
            b.pod(f"web-{i}", f"pod-{i}", node=f"n{i % 4}", labels={"app": "web", "i": str(i)}),
        )
    return core


def service(i: int, selector: dict[str, str] | None = None) -> Any:
    return b.service(f"svc-{i}", f"svc-{i:05d}", selector=selector or {"app": "web"})


@contextmanager
def counting_opcodes() -> Iterator[list[int]]:
    """Count the bytecode instructions executed in metacollector's reducer and state."""
    count = [0]
    files = (sys.modules["metacollector.reducer"].__file__, state.__file__)

    def trace(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if frame.f_code.co_filename not in files:
            return None
        frame.f_trace_opcodes = True

        def local(frame: FrameType, event: str, arg: object) -> Callable[..., Any]:
            if event == "opcode":
                count[0] += 1
            return local

        return local

    sys.settrace(trace)
    try:
        yield count
    finally:
        sys.settrace(None)


def test_thousandth_service_over_the_same_pods_costs_what_the_first_did() -> None:
    core = selected_cluster()
    st = core.reducer.state
    ops: list[int] = []
    opcodes: list[int] = []
    for i in range(SERVICES):
        svc = service(i)
        before = st.ops
        with counting_opcodes() as count:
            core.apply("ADDED", "Service", svc)
        ops.append(st.ops - before)
        opcodes.append(count[0])
    first, second = ops[:1000], ops[1000:]
    # Every Service costs the same: the pods it selects, each once. (The very first one also
    # indexes the namespace's pods under "app", the first selector key there: once.)
    assert ops[0] == ops[1] + PODS
    assert max(second) <= max(first) and sum(second) <= sum(first)
    assert min(ops[1:]) == max(ops[1:])
    assert max(ops) <= 4 * PODS
    assert max(opcodes[1000:]) <= max(opcodes[:1000])
    assert sum(opcodes[1000:]) <= sum(opcodes[:1000])
    # The state is right: every pod references every Service, sorted on the wire.
    entry = st.pods["pod-0"]
    assert len(entry.services) == SERVICES and isinstance(entry.services, set)
    assert dict(entry.refs())["Service"] == tuple(f"svc-{i:05d}" for i in range(SERVICES))

    # Changing a selector and deleting Services costs the pods they selected and select now.
    for i in range(SERVICES - 10, SERVICES):
        before = st.ops
        core.apply("MODIFIED", "Service", service(i, {"i": "3"}))
        assert st.ops - before <= 4 * PODS
    for i in range(SERVICES):
        before = st.ops
        core.apply("DELETED", "Service", service(i))
        assert st.ops - before <= 4 * PODS
    assert (
        not st.pods["pod-0"].services
        and not st.services
        and not st.key_nodes.get(("Service", "svc-00000"))
    )


def test_a_burst_of_services_renders_each_pod_once_per_flush() -> None:
    core = selected_cluster()
    sub = core.subscribe("n0")
    core.drain(sub)
    calls = [0]
    real = render.render_refs

    def counted(refs: render.Refs) -> bytes:
        calls[0] += 1
        return real(refs)

    with patch.object(state, "render_refs", counted):
        for i in range(500):
            core.apply("ADDED", "Service", service(i))
        assert calls[0] == 0  # nothing rendered while nobody asked
        events = core.drain(sub)
    pods_on_n0 = PODS // 4
    assert calls[0] == pods_on_n0  # each pod's refs rendered once for the whole burst
    updates = [e for e in events if e.kind == "Pod"]
    assert len(updates) == pods_on_n0 and all(e.reason == "Update" for e in updates)
    assert list(updates[0].refs.resources["Service"].list) == sorted(
        f"svc-{i:05d}" for i in range(500)
    )
    assert sum(e.kind == "Service" and e.reason == "Create" for e in events) == 500


def test_relabel_looks_only_at_services_selecting_the_changed_pairs() -> None:
    core = selected_cluster()
    st = core.reducer.state
    for i in range(SERVICES):
        core.apply("ADDED", "Service", service(i))
    for i in range(20):
        core.apply("ADDED", "Service", service(SERVICES + i, {"i": "0", "app": "web"}))
    # A label no Service selects on: nothing is looked at but the pod itself.
    before = st.ops
    core.apply(
        "MODIFIED",
        "Pod",
        b.pod("web-0", "pod-0", node="n0", labels={"app": "web", "i": "0", "rev": "2"}),
    )
    assert st.ops - before <= 4
    assert ("rev", "2") not in st.pods_by_label["shop"]  # no Service selects on "rev"
    # Losing the pair 21 Services select on: only those 21 (not the other 2,000) are looked at.
    before = st.ops
    core.apply(
        "MODIFIED", "Pod", b.pod("web-0", "pod-0", node="n0", labels={"app": "web", "i": "x"})
    )
    assert st.ops - before <= 3 * 20 + 4
    assert len(st.pods["pod-0"].services) == SERVICES


def test_other_indexes_cost_what_they_change() -> None:
    """Namespace and ReplicaSet changes cost the pods whose refs they change; a pod's move
    costs its own refs."""
    core = Core()
    st = core.reducer.state
    core.apply("ADDED", "Namespace", b.namespace("shop", "ns-shop"))
    core.apply("ADDED", "Namespace", b.namespace("other", "ns-other"))
    core.apply("ADDED", "ReplicaSet", b.metadata_only("ReplicaSet", "rs", "rs-1", "shop"))
    for i in range(300):
        core.apply(
            "ADDED",
            "Pod",
            b.pod(
                f"p{i}",
                f"pod-{i}",
                node=f"n{i % 3}",
                labels={"app": "web"},
                owners=[b.owner("ReplicaSet", "rs-1")] if i < 100 else None,
            ),
        )
    for i in range(50):
        core.apply("ADDED", "Pod", b.pod(f"q{i}", f"other-{i}", namespace="other", node="n0"))
    for i in range(1000):
        core.apply("ADDED", "Service", service(i))
    before = st.ops
    core.apply(
        "MODIFIED",
        "ReplicaSet",
        b.metadata_only("ReplicaSet", "rs", "rs-1", "shop", owners=[b.owner("Deployment", "d")]),
    )
    assert st.ops - before <= 3 * 100  # the 100 pods it owns, not their 1,000 Services each
    before = st.ops
    core.apply("DELETED", "Namespace", b.namespace("other", "ns-other"))
    assert st.ops - before <= 3 * 50
    before = st.ops
    core.apply("MODIFIED", "Pod", b.pod("p7", "pod-7", node="n2", labels={"app": "web"}))
    assert st.ops - before <= 2 * (1000 + 3) + 2  # its refs off one node and onto another
