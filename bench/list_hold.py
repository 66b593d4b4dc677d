"""Time and memory to list and hold a large cluster with the seven reflectors.

The emulator runs in its own process (``python -m metacollector.cli emulator``, TLS unless
--plain-http); this process runs one Reflector per kind, decoding into the model types with
string interning as `metacollector run` does, and holds every object in the reflectors' stores.
Reported: wall time until every reflector is synced, objects per kind, this process's peak RSS
(ru_maxrss: the emulator is a child and not counted), RSS after a gc, and the longest task step
(the longest the reflectors held the event loop without a checkpoint: probes, subscribers and
shutdown wait that long).

python bench/list_hold.py [--nodes 5000 --pods-per-node 30 --page-size 500 --streaming-list]
"""

from __future__ import annotations

import argparse
import gc
import pathlib
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import trio
from _common import LongestStep, emulator_command, memory_mb, report, start_emulator, stop

from metacollector.kube.client import make_client
from metacollector.kube.config import load_kubeconfig
from metacollector.kube.reflector import Delta, Reflector
from metacollector.kube.resources import RESOURCES
from metacollector.model import KIND_TYPES, intern_strings
from metacollector.testing import free_port


async def measure(kubeconfig: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    baseline = memory_mb()["rss_mb"]
    cfg = load_kubeconfig(str(kubeconfig))
    deltas = 0

    async def drain(receive: trio.MemoryReceiveChannel[Sequence[Delta]]) -> None:
        nonlocal deltas
        async for batch in receive:
            deltas += len(batch)

    async with make_client(cfg) as client, trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[Sequence[Delta]](16)
        reflectors: list[Reflector[Any]] = [
            Reflector(
                client,
                res,
                KIND_TYPES[res.kind],
                send.clone(),
                prepare=intern_strings,
                page_size=args.page_size,
                streaming_list=args.streaming_list,
            )
            for res in RESOURCES
        ]
        send.close()
        nursery.start_soon(drain, receive)
        start = time.perf_counter()
        longest = LongestStep()
        trio.lowlevel.add_instrument(longest)
        for reflector in reflectors:
            nursery.start_soon(reflector.run)
        for reflector in reflectors:
            await reflector.synced.wait()
        elapsed = time.perf_counter() - start
        trio.lowlevel.remove_instrument(longest)
        await trio.sleep(0.5)  # let the drain catch up before counting
        gc.collect()
        result = {
            "seconds_to_sync": round(elapsed, 2),
            "objects": {r.kind: len(r.store) for r in reflectors},
            "total_objects": sum(len(r.store) for r in reflectors),
            "deltas_handed_on": deltas,
            "relists": sum(r.relists for r in reflectors),
            "rss_baseline_mb": round(baseline, 1),
            "rss_after_gc_mb": round(memory_mb()["rss_mb"], 1),
            "peak_rss_mb": round(memory_mb()["hwm_mb"], 1),
            "longest_task_step_ms": round(longest.longest * 1000, 1),
            "longest_task_step_in": longest.task.rsplit(".", 1)[-1],
        }
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods-per-node", type=int, default=30)
    p.add_argument("--page-size", type=int, default=500)
    p.add_argument("--streaming-list", action="store_true")
    p.add_argument("--plain-http", action="store_true", help="emulator without TLS")
    p.add_argument("--out", default="list_hold.json", help="a name under bench/results/, or a path")
    args = p.parse_args()
    port = free_port()
    tmp = pathlib.Path(tempfile.mkdtemp())
    t0 = time.monotonic()
    command = emulator_command(
        port, tmp / "kubeconfig", args.nodes, args.pods_per_node, plain_http=args.plain_http
    )
    emulator = start_emulator(command)
    try:
        result: dict[str, Any] = {
            "nodes": args.nodes,
            "pods_per_node": args.pods_per_node,
            "page_size": args.page_size,
            "streaming_list": args.streaming_list,
            "tls": not args.plain_http,
            "emulator_start_s": round(time.monotonic() - t0, 1),
        }
        result.update(trio.run(measure, tmp / "kubeconfig", args))
    finally:
        stop(emulator, timeout=30)
    report(result, args.out)


if __name__ == "__main__":
    main()
