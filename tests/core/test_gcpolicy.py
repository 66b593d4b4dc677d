"""The GC policy: the synced heap is frozen out of collections, and every pause is observed."""

from __future__ import annotations

import gc

from metacollector.gcpolicy import FULL_COLLECTION_EVERY, freeze_heap, observe_pauses


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
