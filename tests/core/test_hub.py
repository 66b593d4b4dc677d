"""The hub: batches applied in slices with checkpoints between them (issue 18), and the
CloudEvents changes it builds from the reducer's edits (issue 17: the reducer no longer
records them)."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from metacollector.changes import ObjectChange
from metacollector.cloudevents import coalesce
from metacollector.events import Delta
from metacollector.hub import Hub
from tests.core import builders as b


def pods(count: int) -> list[Delta]:
    return [
        Delta("ADDED", "Pod", b.pod(f"p{i}", f"pod-{i}", node=f"n{i % 50}", labels={"a": "b"}))
        for i in range(count)
    ]


async def test_a_large_batch_lets_other_tasks_run_while_it_is_applied() -> None:
    hub = Hub()
    batch = pods(5000)  # ~50 ms or more of reducer work: many 2 ms slices
    seen_midway: list[int] = []
    send, receive = trio.open_memory_channel[Sequence[Delta]](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run, receive)

        async def ticker() -> None:
            while hub.applied < len(batch):
                if hub.applied > 0:
                    seen_midway.append(hub.applied)
                await trio.lowlevel.checkpoint()

        await send.send(batch)
        await ticker()
        await send.aclose()
    assert hub.applied == len(batch)
    assert hub.slices > 1 and seen_midway, "the batch was applied without a checkpoint"
    assert len(hub.state.pods) == len(batch)


async def test_changes_offered_per_slice_equal_offering_every_edit() -> None:
    """Coalescing in the hub hands the sink exactly what it would have coalesced itself."""
    deltas = [
        Delta("ADDED", "Namespace", b.namespace("shop", "ns-shop")),
        Delta("ADDED", "Pod", b.pod("a", "pod-a", labels={"app": "web"})),
        Delta("MODIFIED", "Pod", b.pod("a", "pod-a", labels={"app": "web"}, ip="10.0.0.1")),
        Delta("ADDED", "Service", b.service("web", "svc-web", selector={"app": "web"})),
        Delta("ADDED", "Pod", b.pod("gone", "pod-gone")),
        Delta("DELETED", "Pod", b.pod("gone", "pod-gone")),
        Delta("ADDED", "Pod", b.pod("b", "pod-b", node="n2", labels={"app": "web"})),
        Delta("DELETED", "Pod", b.pod("b", "pod-b", node="n2", labels={"app": "web"})),
        Delta("ADDED", "Pod", b.pod("b", "pod-b", node="n3", labels={"app": "web"})),
        Delta("MODIFIED", "Namespace", b.namespace("shop", "ns-shop", {"team": "x"})),
    ]
    batched: list[ObjectChange] = []
    Hub(offer=batched.append).apply(deltas)
    one_by_one: list[ObjectChange] = []
    hub = Hub(offer=one_by_one.append)
    for delta in deltas:
        hub.apply([delta])

    def folded(changes: list[ObjectChange]) -> dict[str, ObjectChange]:
        out: dict[str, ObjectChange] = {}
        for change in changes:
            pending = out.get(change.uid)
            out[change.uid] = coalesce(pending, change) if pending is not None else change
        return out

    assert len(batched) == len({c.uid for c in batched}) == 5
    expected = folded(one_by_one)
    assert list(folded(batched)) == list(expected)
    for uid, change in folded(batched).items():
        assert (change.reason, change.meta, change.status, change.refs, change.node) == (
            expected[uid].reason,
            expected[uid].meta,
            expected[uid].status,
            expected[uid].refs,
            expected[uid].node,
        ), uid
    assert expected["pod-a"].refs == {"Namespace": ["ns-shop"], "Service": ["svc-web"]}
    assert expected["pod-gone"].reason == "Delete"
    assert expected["pod-b"].reason == "Create" and expected["pod-b"].node == "n3"
