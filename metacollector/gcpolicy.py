"""Keep the cyclic garbage collector away from the long-lived cluster state.

A synced collector holds millions of tracked objects (150,000 pods and their metadata). Every
full collection traverses all of them, a pause that stalls every stream (figures: bench/README.md,
"Figures behind code comments"). ``freeze_heap`` moves what exists now into the permanent
generation (``gc.freeze``), so collections only look at objects made since; objects that die
later are still freed by reference counting, which is how almost all of them go.

What is made after the freeze (h2 connections and mailboxes of thousands of subscribers, several
hundred tracked objects each) is still traversed by full collections; ``observe_pauses``
exports every pause, so an operator sees them, and after the freeze full collections come only
from ``collect_on_a_clock``: once enough connections closed to leave cyclic garbage worth a
pass, and at the latest hourly.

The young generations are collected on a clock (``collect_on_a_clock``): their automatic trigger
counts allocations minus deallocations, and with thousands of connections each waiting for
seconds, every wake-up frees the old wait's objects while making new ones, so the count stays
low while the young generation grows to tens of thousands of objects, and the collection that
finally comes is a long pause (measured with 5,000 subscribers: bench/README.md, Scale, run 6).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import trio

# After the freeze, no automatic full collection (only after this many generation-1
# collections, the default being 10: days here). What one would traverse is mostly the live
# subscribers' connections, made after the freeze: at 5,000 subscribers one took 0.7 s, a pause
# every stream felt (bench/README.md, Scale, 2026-12-02). ``collect_on_a_clock`` makes them instead,
# when there is cyclic garbage worth a pass: what closed connections leave.
FULL_COLLECTION_EVERY = 1_000_000

# ``collect_on_a_clock`` makes a full collection once this many connections closed since the last
# one, and at the latest after ``FULL_COLLECTION_INTERVAL`` seconds (the rest of the long-lived
# cyclic garbage: a restarted watch's, a finished CloudEvents client's).
CLOSED_CONNECTIONS_PER_FULL_COLLECTION = 1000
FULL_COLLECTION_INTERVAL = 3600.0


# Seconds between collections of the young generations: each then sees what a quarter second
# made, never a backlog.
YOUNG_COLLECTION_INTERVAL = 0.25


async def collect_on_a_clock(
    closed_connections: Callable[[], int],
    interval: float = YOUNG_COLLECTION_INTERVAL,
) -> None:
    """Collect generations 0 and 1 every ``interval`` seconds, forever; every generation instead
    once ``CLOSED_CONNECTIONS_PER_FULL_COLLECTION`` connections closed (``closed_connections``:
    how many so far) or ``FULL_COLLECTION_INTERVAL`` passed since the last full collection."""
    closed_at_full, full_at = closed_connections(), trio.current_time()
    while True:
        await trio.sleep(interval)
        closed, now = closed_connections(), trio.current_time()
        if (
            closed - closed_at_full >= CLOSED_CONNECTIONS_PER_FULL_COLLECTION
            or now - full_at >= FULL_COLLECTION_INTERVAL
        ):
            closed_at_full, full_at = closed, now
            gc.collect()
        else:
            gc.collect(1)


def freeze_heap() -> None:
    """Collect once, then exempt every surviving object from future collections."""
    gc.collect()
    gc.freeze()
    young, middle, _old = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def observe_pauses(observe: Callable[[int, float, float], None]) -> None:
    """Call ``observe(generation, seconds, cpu_seconds)`` after every collection (wall time,
    and the CPU time of it: the difference is time the process was not running)."""
    started = cpu_started = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal started, cpu_started
        if phase == "start":
            started, cpu_started = time.perf_counter(), time.thread_time()
        else:
            wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
            observe(info["generation"], wall, cpu)

    gc.callbacks.append(callback)
