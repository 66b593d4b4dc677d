"""Memory and time of the departure log (metacollector/departures.py) at full churn.

Records departures of fresh pod keys spread over ``--nodes`` nodes, all inside the window, and
measures with tracemalloc: the bytes the log holds per 10,000 entries, (a) counting the (kind,
uid) key tuples and uid strings it keeps alive after the objects left the cluster (the usual
case: a deleted pod's key lives on only in the log), and (b) its own structures only (keys
allocated beforehand, as for a pod that moved and is still held by the state). Also the cost of
recording at the total cap (every record evicts one), where stale records and compaction show.

    python bench/departures.py [--nodes 5000 --departures 200000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import uuid

from metacollector.departures import DEFAULT_MAX_ENTRIES, DepartureLog
from metacollector.events import Key

BATCH = 100  # departures per record() call, as the hub records one reflector batch


def keys(n: int) -> list[Key]:
    return [("Pod", str(uuid.uuid4())) for _ in range(n)]


def fill(log: DepartureLog, nodes: list[str], ks: list[Key], t0: float = 0.0) -> float:
    """Record every key, round-robin over nodes, in batches; return CPU seconds spent."""
    pairs = [(nodes[i % len(nodes)], k) for i, k in enumerate(ks)]
    start = time.process_time()
    for i in range(0, len(pairs), BATCH):
        log.record(pairs[i : i + BATCH], t0 + i * 1e-4)
    return time.process_time() - start


def measured(nodes: list[str], n: int, keys_inside: bool) -> tuple[int, int]:
    """(bytes held by the log per 10,000 entries, entries held)."""
    ks = None if keys_inside else keys(n)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    log = DepartureLog(window=600, max_per_node=n, max_entries=n)
    fill(log, nodes, ks if ks is not None else keys(n))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held * 10_000 // len(log), len(log)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--departures", type=int, default=DEFAULT_MAX_ENTRIES)
    args = p.parse_args()
    nodes = [f"node-{i}" for i in range(args.nodes)]
    n = args.departures
    with_keys, held = measured(nodes, n, keys_inside=True)
    own, _ = measured(nodes, n, keys_inside=False)
    log = DepartureLog(window=600, max_entries=n)
    fill_cpu = fill(log, nodes, keys(n))
    churn = keys(n)
    at_cap_cpu = fill(log, nodes, churn, t0=100.0)  # every record now evicts the oldest
    print(f"{'departure log, ' + str(args.nodes) + ' nodes':<58} {'value':>14}")
    print(f"{'entries held':<58} {held:>14,}")
    print(f"{'bytes per 10,000 entries, keys kept alive by the log':<58} {with_keys:>14,}")
    print(f"{'bytes per 10,000 entries, log structures only':<58} {own:>14,}")
    print(
        f"{'MB at the default total cap (' + f'{DEFAULT_MAX_ENTRIES:,}' + ')':<58} "
        f"{with_keys * DEFAULT_MAX_ENTRIES / 10_000 / 1e6:>14.1f}"
    )
    print(f"{'record(), CPU us per departure, filling':<58} {fill_cpu / n * 1e6:>14.2f}")
    print(
        f"{'record(), CPU us per departure, at the cap (evicting)':<58} "
        f"{at_cap_cpu / n * 1e6:>14.2f}"
    )
    print(f"{'stale records in the order queue at the end':<58} {len(log._order) - len(log):>14,}")


if __name__ == "__main__":
    main()
