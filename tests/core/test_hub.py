"""The hub: batches applied in slices with checkpoints between them (issue 18), and the
CloudEvents changes it builds from the reducer's edits (issue 17: the reducer no longer
records them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import trio

from metacollector import hub as hub_module
from metacollector import reducer as reducer_module
from metacollector.changes import ObjectChange
from metacollector.cloudevents import coalesce
from metacollector.events import Delta
from metacollector.hub import PODS_PER_STEP, Hub
from metacollector.reducer import Reducer
from metacollector.subscriptions import FALCO_KINDS, selected_kinds
from tests.support import builders as b
from tests.support.steps import MostPerStep


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
    """Rendering once per object per slice hands the sink what offering every edit as it
    happened would: the same offers in order, each stamped with its own cause (the delta's
    resourceVersion and first-list flag, which the sink's watermark and takeover rules need),
    and, after the sink's own coalescing, the same content."""
    deltas = [
        Delta("ADDED", "Namespace", b.namespace("shop", "ns-shop"), initial=True),
        Delta("ADDED", "Pod", b.pod("a", "pod-a", labels={"app": "web"}, rv="2"), initial=True),
        Delta("MODIFIED", "Pod", b.pod("a", "pod-a", labels={"app": "web"}, ip="10.0.0.1", rv="3")),
        Delta("ADDED", "Service", b.service("web", "svc-web", selector={"app": "web"}, rv="4")),
        Delta("ADDED", "Pod", b.pod("gone", "pod-gone", rv="5")),
        Delta("DELETED", "Pod", b.pod("gone", "pod-gone", rv="6")),
        Delta("ADDED", "Pod", b.pod("b", "pod-b", node="n2", labels={"app": "web"}, rv="7")),
        Delta("DELETED", "Pod", b.pod("b", "pod-b", node="n2", labels={"app": "web"}, rv="8")),
        Delta("ADDED", "Pod", b.pod("b", "pod-b", node="n3", labels={"app": "web"}, rv="9")),
        Delta(
            "MODIFIED",
            "Namespace",
            b.metadata_only("Namespace", "shop", "ns-shop", labels={"t": "x"}, rv="10"),
        ),
    ]
    batched: list[ObjectChange] = []
    Hub(offer=batched.append).apply(deltas)
    one_by_one: list[ObjectChange] = []
    hub = Hub(offer=one_by_one.append)
    for delta in deltas:
        hub.apply([delta])

    def causes(changes: list[ObjectChange]) -> list[tuple[str, str, str, bool]]:
        return [(c.reason, c.uid, c.cause_version, c.initial) for c in changes]

    def folded(changes: list[ObjectChange]) -> dict[str, ObjectChange]:
        out: dict[str, ObjectChange] = {}
        for change in changes:
            pending = out.get(change.uid)
            out[change.uid] = coalesce(pending, change) if pending is not None else change
        return out

    assert causes(batched) == causes(one_by_one)
    assert len({c.uid for c in batched}) == 5 < len(batched)
    expected = folded(one_by_one)
    assert list(folded(batched)) == list(expected)
    for uid, change in folded(batched).items():
        assert replace(change, observed_at=0) == replace(expected[uid], observed_at=0), uid
    assert expected["pod-a"].refs == {"Namespace": ["ns-shop"], "Service": ["svc-web"]}
    assert (expected["pod-a"].version, expected["pod-a"].cause_version) == ("3", "2")
    assert expected["pod-a"].reason == "Create" and not expected["pod-a"].initial
    # the Service's arrival changed pod-a's refs: an Update caused by the Service's version
    assert ("Update", "pod-a", "4", False) in causes(batched)
    assert expected["pod-gone"].reason == "Delete"
    assert expected["pod-b"].reason == "Create" and expected["pod-b"].node == "n3"
    ns = expected["ns-shop"]  # a first-list Create, then a live Update: the Create's cause
    assert (ns.reason, ns.version, ns.cause_version, ns.initial) == ("Create", "10", "1", False)
    assert ("Update", "ns-shop", "10", False) in causes(batched)


async def test_a_change_for_many_pods_is_split_and_finished_before_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Service selecting 5 x PODS_PER_STEP pods, then a Namespace arriving after them (work
    for every pod too), then one more pod: each slice (SLICE_SECONDS 0: one step per slice)
    does at most PODS_PER_STEP pods of such work; the next delta is applied only once the
    split one is whole; the outcome (state, subscriber events, CloudEvents changes with their
    causes, the watermark's deltas) equals applying the batch whole."""
    count = 5 * PODS_PER_STEP
    batch = [
        *pods(count),
        Delta("ADDED", "Service", b.service("all", "svc-all", selector={"a": "b"}, rv="90")),
        Delta("ADDED", "Namespace", b.namespace("shop", "ns-shop", labels={}), initial=False),
        Delta("ADDED", "Pod", b.pod("late", "pod-late", node="n1", labels={"a": "b"}, rv="91")),
    ]
    whole: list[ObjectChange] = []
    reference = Hub(offer=whole.append)
    reference_box = reference.subscribe("n1", selected_kinds(FALCO_KINDS))
    reference.apply(batch)

    monkeypatch.setattr(hub_module, "SLICE_SECONDS", 0.0)
    split: list[ObjectChange] = []
    progressed: list[Delta] = []
    hub = Hub(offer=split.append, progress=progressed.extend)
    box = hub.subscribe("n1", selected_kinds(FALCO_KINDS))
    moves = {"per-pod work": 0}
    service_moved = reducer_module._service_moved
    refresh_one = Reducer._refresh_one

    def counted_move(*args: Any) -> None:
        moves["per-pod work"] += 1
        service_moved(*args)

    def counted_refresh(self: Reducer, *args: Any) -> None:
        moves["per-pod work"] += 1
        refresh_one(self, *args)

    monkeypatch.setattr(reducer_module, "_service_moved", counted_move)
    monkeypatch.setattr(Reducer, "_refresh_one", counted_refresh)
    hub.apply(batch[:count])  # the pods, at once
    send, receive = trio.open_memory_channel[Sequence[Delta]](1)
    instrument = MostPerStep(moves)
    trio.lowlevel.add_instrument(instrument)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run, receive)
            await send.send(batch[count:])
            await send.aclose()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    # never more pods of per-pod work in one step
    assert instrument.most == {"per-pod work": PODS_PER_STEP}
    assert hub.slices >= 2 * count // PODS_PER_STEP
    assert progressed == batch  # every delta reported once, in order, when whole
    assert hub.state.by_kind() == reference.state.by_kind()
    for entry in reference.state.pods.values():
        assert hub.state.event_body(entry.node, entry.key) == reference.state.event_body(
            entry.node, entry.key
        )
    events = {m.message for m in hub.take(box, 1 << 30)}
    assert events == {m.message for m in reference.take(reference_box, 1 << 30)}

    def offers(changes: list[ObjectChange]) -> list[tuple[str, str, str, bool]]:
        return [(c.reason, c.uid, c.cause_version, c.initial) for c in changes]

    assert offers(split) == offers(whole)
    assert sum(1 for c in split if c.cause_version == "90") == count + 1  # pods + the Service
