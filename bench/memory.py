"""Where the collector's memory goes: bytes per pod (the synced state) and per subscriber.

    python bench/memory.py --nodes 1000 --pods-per-node 30 --subscribers 1000

The emulator and the collector as bench/scale.py runs them, the collector with tracemalloc on
from its first import (bench/memprobe/sitecustomize.py, one frame: the allocating line). Two
snapshots: once the synced state has settled (RSS steady, every view rendered), and after the
subscribers' initial sync (one TCP connection each, Falco's selector, in worker processes).
The difference, grouped by where it was allocated, is divided by the subscribers; the first
snapshot's state modules by the pods. Tracing slows the collector several times; the bytes do
not depend on the machine's load. RSS without tracing: run with --no-trace.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import tempfile
import tracemalloc
from collections import Counter
from typing import Any

import trio
from _common import HERE, emulator_command, proc_stats, report, start_emulator, stop
from scale import Workers, split

from metacollector.testing import collector_command, free_port, wait_ready

# Groups of allocating files, first match wins (a substring of the file's path).
GROUPS = (
    ("state: decoded objects (reflector, model)", ("kube/", "model.py")),
    ("state: rendered bodies", ("render.py",)),
    ("state: indexes and entries", ("state.py", "reducer.py", "hub.py", "departures.py")),
    ("mailboxes", ("subscriptions.py",)),
    ("h2 Settings", ("/h2/settings.py",)),
    ("h2, hpack (other)", ("/h2/", "/hpack/", "/hyperframe/")),
    ("our gRPC server", ("metacollector/grpc/",)),
    ("trio tasks, scopes, sockets", ("trio", "<attrs", "contextlib", "socket.py", "<string>")),
)


def group(filename: str) -> str:
    return next((name for name, parts in GROUPS if any(p in filename for p in parts)), "other")


def by_group(stats: list[Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in stats:
        out[group(s.traceback[0].filename)] += getattr(s, "size_diff", s.size)
    return out


async def snapshot(pid: int, out: pathlib.Path, n: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    while not (out / f"done{n}").exists():
        await trio.sleep(0.2)
    return tracemalloc.Snapshot.load(str(out / f"snap{n}.pickle"))


async def steady_rss(pid: int, seconds: float = 3.0) -> float:
    """RSS once it stopped moving (the state rendered and frozen after readiness)."""
    last = proc_stats(pid)["rss_mb"]
    while True:
        await trio.sleep(seconds)
        now = proc_stats(pid)["rss_mb"]
        if abs(now - last) < 1.0:
            return now
        last = now


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = pathlib.Path(tempfile.mkdtemp())
    kubeconfig = tmp / "kubeconfig"
    emu_port, grpc_port, http_port = free_port(), free_port(), free_port()
    command = emulator_command(
        emu_port, kubeconfig, args.nodes, args.pods_per_node, token="bench-token"
    )
    emulator = await trio.to_thread.run_sync(start_emulator, command)
    env = dict(os.environ)
    if args.trace:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(HERE / "memprobe"), env.get("PYTHONPATH")])
        )
        env["MEMPROBE_DIR"] = str(tmp)
        env["MEMPROBE_FRAMES"] = "1"
    collector = subprocess.Popen(
        collector_command(
            kubeconfig,
            grpc_port,
            http_port,
            http_port,
            "--log-level=warning",
            "--max-connections=100000",
        ),
        env=env,
    )
    pods = args.nodes * args.pods_per_node
    result: dict[str, Any] = {"nodes": args.nodes, "pods": pods, "subscribers": args.subscribers}
    workers = None
    try:
        await wait_ready(f"http://127.0.0.1:{http_port}/readyz", 900)
        rss_before = await steady_rss(collector.pid)
        before = await snapshot(collector.pid, tmp, 1) if args.trace else None
        if before is None:  # with tracing, RSS would count tracemalloc's own tables
            result["rss_before_subscribers_mb"] = round(rss_before, 1)
        nodes = [f"node-{i}" for i in range(args.nodes)][: args.subscribers]
        workers = Workers(
            "swarm.py",
            [
                {"host": "127.0.0.1", "port": grpc_port, "nodes": part, "quiet": 1.0}
                for part in split(nodes, args.workers)
            ],
        )
        synced = await workers.wait_for("synced", 1800)
        result["initial_sync_events"] = sum(s["events"] for s in synced)
        if before is None:
            after_sync = proc_stats(collector.pid)
            result["rss_after_sync_mb"] = round(after_sync["rss_mb"], 1)
            result["rss_peak_mb"] = round(after_sync["hwm_mb"], 1)
            grown = after_sync["rss_mb"] - rss_before
            result["rss_per_subscriber_kb"] = round(grown * 1024 / args.subscribers, 1)
        else:
            after = await snapshot(collector.pid, tmp, 2)
            state = by_group(before.statistics("filename"))
            for name, size in sorted(state.items(), key=lambda kv: -kv[1]):
                if name.startswith("state"):
                    result[f"per pod: {name} (B)"] = round(size / pods)
            result["per pod: state total (B)"] = round(
                sum(v for k, v in state.items() if k.startswith("state")) / pods
            )
            diff = by_group(after.compare_to(before, "filename"))
            for name, size in sorted(diff.items(), key=lambda kv: -kv[1]):
                if not name.startswith("state"):
                    result[f"per subscriber: {name} (KB)"] = round(
                        size / args.subscribers / 1024, 2
                    )
            result["per subscriber: total (KB)"] = round(
                sum(v for k, v in diff.items() if not k.startswith("state"))
                / args.subscribers
                / 1024,
                2,
            )
    finally:
        if workers is not None:
            workers.stop()
        stop(collector, emulator)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods-per-node", type=int, default=30)
    ap.add_argument("--subscribers", type=int, default=None, help="default: one per node")
    ap.add_argument("--workers", type=int, default=4, help="subscriber swarm processes")
    ap.add_argument(
        "--no-trace", dest="trace", action="store_false", help="RSS only, no tracemalloc"
    )
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    args.subscribers = min(args.subscribers or args.nodes, args.nodes)
    out = (
        args.output
        or f"memory-{args.nodes}x{args.pods_per_node}{'' if args.trace else '-rss'}.json"
    )
    report(trio.run(run, args), out)


if __name__ == "__main__":
    main()
