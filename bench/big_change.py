"""One change that is work for many pods, through the hub: how long it held the event loop.

A namespace of N pods spread over 5,000 nodes, every pod labelled alike; then, through
``Hub.run`` (slices and per-pod steps as `metacollector run` applies them), three changes each
of which is work for all N pods: a Service selecting them all (the first on its label key also
indexes the namespace's pods under it, once), a second one, one deleted, and the Namespace
arriving after its pods (every pod's owner refs). Prints, per change and N: the CPU time the change took and
the longest task step while it was applied (what probes, subscribers and shutdown wait).

    python bench/big_change.py [--pods 10000,50000,150000]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import trio
from _common import LongestStep, report

from metacollector import model
from metacollector.events import Delta
from metacollector.hub import Hub

NODES = 5000


def _decode(kind: str, doc: dict[str, Any]) -> model.Object:
    return model.decode(kind, msgspec.json.encode(doc))


def pod(i: int) -> model.Object:
    meta = {"name": f"p{i}", "uid": f"pod-{i:06d}", "namespace": "big", "labels": {"app": "all"}}
    return _decode("Pod", {"metadata": meta, "spec": {"nodeName": f"node-{i % NODES}"}})


def service(name: str) -> model.Object:
    meta = {"name": name, "uid": f"svc-{name}", "namespace": "big", "resourceVersion": "2"}
    return _decode("Service", {"metadata": meta, "spec": {"selector": {"app": "all"}}})


NAMESPACE = _decode("Namespace", {"metadata": {"name": "big", "uid": "ns-big"}})


async def measure(pods: int) -> dict[str, str]:
    finished: list[Delta] = []
    hub = Hub(progress=finished.extend)  # deltas reported once whole
    hub.apply([Delta("ADDED", "Pod", pod(i), initial=True) for i in range(pods)])
    gc.collect()
    gc.freeze()  # as the collector does once synced
    send, receive = trio.open_memory_channel[Sequence[Delta]](0)
    out = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run, receive)
        for name, delta in (
            ("first Service on its label key added", Delta("ADDED", "Service", service("a"))),
            ("another Service added", Delta("ADDED", "Service", service("b"))),
            ("a Service deleted", Delta("DELETED", "Service", service("b"))),
            ("Namespace arrives", Delta("ADDED", "Namespace", NAMESPACE)),
        ):
            done = len(finished) + 1
            longest = LongestStep()
            trio.lowlevel.add_instrument(longest)
            cpu = time.process_time()
            await send.send([delta])
            while len(finished) < done:
                await trio.sleep(0.001)
            cpu = time.process_time() - cpu
            trio.lowlevel.remove_instrument(longest)
            out[name] = f"{cpu * 1000:.0f} ms CPU, longest step {longest.longest * 1000:.1f} ms"
        await send.aclose()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pods", default="10000,50000,150000")
    p.add_argument("--out", default="big_change.json", help="a name under bench/results/")
    args = p.parse_args()
    result: dict[str, Any] = {}
    for pods in map(int, args.pods.split(",")):
        for name, figure in trio.run(measure, pods).items():
            result[f"{pods} pods: {name}"] = figure
    report(result, args.out)


if __name__ == "__main__":
    main()
