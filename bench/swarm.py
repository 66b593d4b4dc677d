"""A subscriber swarm worker for bench/scale.py: one process, many subscribers, one TCP
connection each (like Falco's plugin), built on metacollector.grpc.client.

Reads a JSON job on stdin: {"host", "port", "nodes": [...], "stamp_label"}; prints JSON lines:
{"event": "synced", ...} once every table has been quiet for `quiet` seconds after connecting,
then, on "report" on stdin, {"event": "report", "digests": {node: sha256}, "latencies_ms": [...]}.
"""

from __future__ import annotations

import gc
import hashlib
import json
import resource
import sys
import time
from typing import Any

import trio

from metacollector.grpc.client import WatchEnded, open_watch
from metacollector.proto import metadata_pb2 as pb


def digest(table: dict[str, bytes]) -> str:
    """Order-independent digest of a subscriber's table (uid -> last event received), each
    event normalised as the check compares it: reason set to Create, serialised
    deterministically. Done here, at report time, not per received event: at full size the
    swarm's per-event work shares the 2 cores with the collector during the timed sync."""
    h = hashlib.sha256()
    for uid in sorted(table):
        event = pb.Event.FromString(table[uid])
        event.reason = "Create"
        h.update(uid.encode() + b"\0" + event.SerializeToString(deterministic=True) + b"\0")
    return h.hexdigest()


class Node:
    def __init__(self) -> None:
        self.table: dict[str, bytes] = {}
        self.last_event = 0.0
        self.events = 0
        self.bytes = 0


async def subscribe(
    job: dict[str, Any], name: str, node: Node, latencies: list[float], stamp_label: str
) -> None:
    seen_stamps: dict[str, str] = {}
    stamp = stamp_label.encode()
    while True:
        try:
            async with open_watch(job["host"], job["port"], name) as stream:
                async for batch in stream.messages():
                    now_ns = time.time_ns()
                    node.last_event = time.monotonic()
                    for raw in batch:
                        event = pb.Event.FromString(raw)
                        node.events += 1
                        node.bytes += len(raw)
                        if event.reason == "Delete":
                            node.table.pop(event.uid, None)
                            continue
                        node.table[event.uid] = raw
                        if stamp in raw and event.kind == "Pod":
                            _record_latency(event, stamp_label, seen_stamps, now_ns, latencies)
        except (WatchEnded, OSError) as exc:
            print(json.dumps({"event": "reconnect", "node": name, "why": str(exc)}), flush=True)
            node.table.clear()
            await trio.sleep(0.5)


def _record_latency(
    event: pb.Event,
    stamp_label: str,
    seen_stamps: dict[str, str],
    now_ns: int,
    latencies: list[float],
) -> None:
    """A pod event carrying a new churn stamp (wall-clock ns before its REST write): record
    the end-to-end latency once per stamp."""
    stamp = json.loads(event.meta).get("labels", {}).get(stamp_label)
    if stamp and seen_stamps.get(event.uid) != stamp:
        seen_stamps[event.uid] = stamp
        latencies.append((now_ns - int(stamp)) / 1e6)


async def main() -> None:
    job = json.loads(sys.stdin.readline())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nodes = {name: Node() for name in job["nodes"]}
    latencies: list[float] = []
    stamp_label = job.get("stamp_label", "bench-stamp")
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for name, node in nodes.items():
            nursery.start_soon(subscribe, job, name, node, latencies, stamp_label)
        quiet = job.get("quiet", 1.0)
        while True:
            await trio.sleep(0.1)
            last = max((n.last_event for n in nodes.values()), default=0.0)
            if all(n.events for n in nodes.values()) and time.monotonic() - last > quiet:
                break
        gc.freeze()  # the tables are long-lived: keep GC passes (and their pauses) off them
        print(
            json.dumps(
                {
                    "event": "synced",
                    "sync_s": last - started,
                    "events": sum(n.events for n in nodes.values()),
                    "cpu_s": time.process_time(),
                    "bytes": sum(n.bytes for n in nodes.values()),
                }
            ),
            flush=True,
        )
        stdin = trio.wrap_file(sys.stdin)
        while True:
            line = await stdin.readline()
            if not line:
                break
            command = json.loads(line)
            if command.get("cmd") == "reset_latencies":
                latencies.clear()
            elif command.get("cmd") == "report":
                print(
                    json.dumps(
                        {
                            "event": "report",
                            "digests": {k: digest(n.table) for k, n in nodes.items()},
                            "latencies_ms": latencies,
                        }
                    ),
                    flush=True,
                )
            elif command.get("cmd") == "stop":
                break
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
