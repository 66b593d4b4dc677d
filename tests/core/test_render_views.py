"""``ClusterState.render_views`` (run once after the first sync, in slices): afterwards every
body a view holds is cached, byte-equal to rendering it on demand, and nothing outside a view
was rendered."""

from __future__ import annotations

from metacollector.model import SharedValues
from tests.support import builders as b
from tests.support.harness import Core


def cluster() -> Core:
    core = Core()
    core.apply("ADDED", "Namespace", b.namespace("shop", "ns-shop"))
    core.apply("ADDED", "Service", b.service("s1", "web", "shop", selector={"app": "web"}))
    core.apply("ADDED", "Service", b.service("s2", "idle", "shop", selector={"app": "none"}))
    for i in range(6):
        node = f"n{i % 3}" if i < 5 else ""  # the last pod is not scheduled: in no view
        core.apply("ADDED", "Pod", b.pod(f"p{i}", f"pod-{i}", node=node, labels={"app": "web"}))
    return core


def test_render_views_caches_exactly_the_bodies_views_hold() -> None:
    warmed, cold = cluster(), cluster()
    state = warmed.reducer.state
    yielded = sum(1 for _ in state.render_views())
    assert yielded == 5 + 2  # five scheduled pods, their namespace and the selecting Service
    assert all(e.body is not None for e in state.pods.values() if e.node)
    assert state.pods["pod-5"].body is None
    assert ("Service", "idle") not in state.bodies
    assert sum(1 for _ in state.render_views()) == 0  # nothing left to render
    for node in ("n0", "n1", "n2"):
        for key in state.view(node):
            assert state.event_body(node, key) == cold.reducer.state.event_body(node, key)


def test_equal_refs_are_held_once_and_tables_stay_bounded() -> None:
    core = cluster()
    st = core.reducer.state
    for _ in st.render_views():
        pass
    rendered = [e for e in st.pods.values() if e.node]
    # same namespace, no owner, the same Service: one encoded refs object for all five
    assert len({id(e.encoded_refs) for e in rendered}) == 1
    # a full table starts afresh (it only shares: what holders have stays as it is)
    shared = SharedValues[bytes](held=3)
    sizes = []
    for i in range(10):
        value = b"%d" % i
        assert shared.get(value) is value
        assert shared.get(b"%d" % i) is value or len(shared.values) == 0
        sizes.append(len(shared.values))
    assert max(sizes) < 3
