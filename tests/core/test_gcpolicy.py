"""The GC policy: the synced heap is frozen out of collections, and every pause is observed."""

from __future__ import annotations

import gc

import trio
import trio.testing

from metacollector.gcpolicy import (
    CLOSED_CONNECTIONS_PER_FULL_COLLECTION,
    FULL_COLLECTION_EVERY,
    FULL_COLLECTION_INTERVAL,
    collect_on_a_clock,
    freeze_heap,
    observe_pauses,
)


def test_freeze_heap_exempts_what_exists_and_makes_full_collections_rarer() -> None:
    threshold = gc.get_threshold()
    held = [{"pod": i} for i in range(1000)]
    try:
        freeze_heap()
        assert gc.get_freeze_count() >= len(held)
        assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY > 10
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_every_collection_is_observed_with_its_generation() -> None:
    seen: list[tuple[int, float, float]] = []
    observe_pauses(lambda generation, wall, cpu: seen.append((generation, wall, cpu)))
    callback = gc.callbacks[-1]
    try:
        gc.collect(1)
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert [generation for generation, _, _ in seen][-2:] == [1, 2]
    assert all(wall >= 0 and cpu >= 0 for _, wall, cpu in seen)


async def replacement_churn(young_sizes: list[int]) -> None:
    """Long-lived objects replaced one by one, as waiting tasks replace their wait objects: each
    new one is made as an old one dies. Records the young generations' size as it goes."""
    held = [[i] for i in range(20_000)]
    gc.collect()  # now all old
    for start in range(0, len(held), 1_000):
        for i in range(start, start + 1_000):
            held[i] = [i]
        young_sizes.append(len(gc.get_objects(0)) + len(gc.get_objects(1)))
        await trio.sleep(0.02)


async def test_young_generations_collected_on_a_clock_stay_small_under_replacement() -> None:
    unchecked: list[int] = []
    await replacement_churn(unchecked)
    clocked: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_on_a_clock, lambda: 0, 0.01)
        await replacement_churn(clocked)
        nursery.cancel_scope.cancel()
    # Allocations minus deallocations never reach the automatic trigger: the young generation
    # holds every new object, a long pause in waiting.
    assert max(unchecked) > 15_000
    assert max(clocked) < 5_000


async def test_full_collections_come_with_closed_connections_or_the_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Automatic full collections are off after the freeze; ``collect_on_a_clock`` makes one per
    CLOSED_CONNECTIONS_PER_FULL_COLLECTION closed connections, and at least hourly."""
    closed = 0
    full: list[float] = []

    def observed(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(trio.current_time())

    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0], threshold[1], FULL_COLLECTION_EVERY)  # as after the freeze
    gc.callbacks.append(observed)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_on_a_clock, lambda: closed, 1.0)
            await trio.sleep(10.5)
            assert full == []  # connections open, nothing closing: no full pass
            closed = CLOSED_CONNECTIONS_PER_FULL_COLLECTION - 1
            await trio.sleep(2)
            assert full == []
            closed += 1
            await trio.sleep(1)
            assert full == [13.0]
            await trio.sleep(FULL_COLLECTION_INTERVAL)
            assert full == [13.0, 13.0 + FULL_COLLECTION_INTERVAL]
            nursery.cancel_scope.cancel()
    finally:
        gc.callbacks.remove(observed)
        gc.set_threshold(*threshold)
