"""Abuse benchmark: attacks on the collector's gRPC port while a healthy subscriber (its own
connection) measures its change latency. Emulator, collector, attacker: each its own process;
the collector's CPU and RSS are read from /proc/<pid>, its limit hits from /metrics.

Phases (each ``--seconds`` long unless the attack ends sooner):
  baseline       no attack
  half_sent      4 connections x 40 streams, each announcing a 60 KB request and never ending it
  one_byte       3 clients with 1-byte initial windows, topping up one byte at a time
  rapid_reset    20,000 streams opened and reset at once on one connection (CVE-2023-44487)
  h2load_flood   h2load: 50 connections x 50 streams of invalid (GET) requests
  multiplex      messages/s and CPU: 20 Watch streams on one connection vs 20 connections

    python bench/abuse.py [--nodes 20 --pods-per-node 100 --seconds 10]

The attack functions live in metacollector/testing/h2_attacks.py (tests use them too). ``--attack NAME``
runs one attack in this process and prints its figures as JSON (how the bench runs them).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio
from _common import proc_stats

from metacollector.grpc.client import open_watch
from metacollector.testing import collector_command, free_port, wait_ready
from metacollector.testing.h2_attacks import ATTACKS

HERE = pathlib.Path(__file__).parent
PY = sys.executable
WATCH = "/metadata.Metadata/Watch"
STAMP = "abuse-stamp"


# --- the bench: emulator + collector processes, healthy subscriber, attacks ----------------------


async def metric_samples(port: int, prefix: str) -> dict[str, float]:
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


class Healthy:
    """A subscriber on its own connection; ``probe`` stamps a pod of its node over REST and
    measures until the change arrives."""

    def __init__(self, grpc_port: int, api: httpx.AsyncClient, node: str) -> None:
        self.grpc_port, self.api, self.node = grpc_port, api, node
        self.seen: dict[str, float] = {}
        self.errors: list[str] = []

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_watch("127.0.0.1", self.grpc_port, self.node) as stream:
            task_status.started()
            async for event in stream.events():
                if STAMP in event.meta:
                    stamp = json.loads(event.meta).get("labels", {}).get(STAMP)
                    if stamp is not None:
                        self.seen.setdefault(stamp, time.monotonic())

    async def pod(self) -> tuple[str, str]:
        r = await self.api.get(
            "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={self.node}"}
        )
        items = [p for p in r.json()["items"] if p["spec"].get("nodeName") == self.node]
        return items[0]["metadata"]["namespace"], items[0]["metadata"]["name"]

    async def probe(self, seconds: float, rate: float = 10.0) -> list[float]:
        """Stamp ``rate`` times a second for ``seconds``; latencies in ms."""
        ns, name = await self.pod()
        sent: dict[str, float] = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stamp = str(time.time_ns())
            sent[stamp] = time.monotonic()
            patch = {"metadata": {"labels": {STAMP: stamp}}}
            await self.api.patch(
                f"/api/v1/namespaces/{ns}/pods/{name}",
                json=patch,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            await trio.sleep(1 / rate)
        with trio.move_on_after(5):
            while not all(s in self.seen for s in sent):
                await trio.sleep(0.05)
        # level-triggered: a later stamp may supersede an earlier one; count what arrived
        return [(self.seen[s] - t) * 1000 for s, t in sent.items() if s in self.seen]


def quantiles(values: list[float]) -> str:
    if not values:
        return "no changes arrived"
    values = sorted(values)

    def q(p: float) -> float:
        return values[min(len(values) - 1, int(len(values) * p))]

    return f"{q(0.5):.1f} / {q(0.9):.1f} / {q(0.99):.1f} ({len(values)})"


async def run_attack(
    name: str, grpc_port: int, node: str, seconds: float, probe: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Run one attack in its own process: started and imported first, then told to go, so its
    interpreter start-up is not counted against the server."""
    proc = subprocess.Popen(
        [
            PY,
            str(HERE / "abuse.py"),
            "--attack",
            name,
            "--port",
            str(grpc_port),
            "--node",
            node,
            "--seconds",
            str(seconds),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        # the attacker at the lowest priority, as if on another machine: on these 2 shared
        # cores its own CPU would otherwise delay the healthy path (emulator, collector, bench)
        preexec_fn=lambda: os.nice(19),
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdout = proc.stdout
    assert (await trio.to_thread.run_sync(stdout.readline)).strip() == "ready"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = await trio.to_thread.run_sync(stdout.readline)
    proc.wait()
    return json.loads(line)  # type: ignore[no-any-return]


async def multiplex(
    grpc_port: int, collector_pid: int, nodes: list[str], rounds: int
) -> dict[str, Any]:
    """Messages/s and collector CPU-s to sync 20 views: 20 streams on one connection vs one
    connection each (alternating A/B rounds; medians)."""
    from bench.multiplex import sync_views

    figures: dict[str, list[tuple[float, float, int]]] = {"one_connection": [], "connections": []}
    await sync_views("127.0.0.1", grpc_port, nodes, shared=False)  # learns each view's size
    for _ in range(rounds):
        for mode in figures:
            cpu0 = proc_stats(collector_pid)["cpu_s"]
            t0 = time.monotonic()
            messages = await sync_views(
                "127.0.0.1", grpc_port, nodes, shared=mode == "one_connection"
            )
            wall = time.monotonic() - t0
            figures[mode].append(
                (messages / wall, proc_stats(collector_pid)["cpu_s"] - cpu0, messages)
            )
    return {
        mode: {
            "messages": runs[0][2],
            "messages_per_s": round(statistics.median(r[0] for r in runs)),
            "collector_cpu_s": round(statistics.median(r[1] for r in runs), 3),
        }
        for mode, runs in figures.items()
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = pathlib.Path(tempfile.mkdtemp())
    kubeconfig = tmp / "kubeconfig"
    emu_port, grpc_port, http_port = free_port(), free_port(), free_port()
    emulator = subprocess.Popen(
        [
            PY,
            "-m",
            "metacollector.cli",
            "emulator",
            "--listen",
            f"127.0.0.1:{emu_port}",
            "--write-kubeconfig",
            str(kubeconfig),
            "--plain-http",
            "--token",
            "t",
            "--nodes",
            str(args.nodes),
            "--pods-per-node",
            str(args.pods_per_node),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emulator.stdout is not None
    await trio.to_thread.run_sync(emulator.stdout.readline)
    collector = subprocess.Popen(
        collector_command(kubeconfig, grpc_port, http_port, http_port, "--log-level", "error")
    )
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, shared with other work"}
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{emu_port}", headers={"Authorization": "Bearer t"}
        ) as api:
            await wait_ready(f"http://127.0.0.1:{http_port}/readyz", 120)
            async with trio.open_nursery() as nursery:
                healthy = Healthy(grpc_port, api, "node-0")
                await nursery.start(healthy.run)
                await trio.sleep(1)
                phases: dict[str, dict[str, Any]] = {}
                for name in ["baseline", *(a for a in ATTACKS if a in args.phases)]:
                    before = proc_stats(collector.pid)
                    hits0 = await metric_samples(http_port, "metacollector_limit_hits_total")
                    latencies: list[float] = []

                    async def probe(latencies: list[float] = latencies) -> None:
                        latencies.extend(await healthy.probe(args.seconds))

                    figures: dict[str, Any] = {}
                    async with trio.open_nursery() as phase:
                        if name == "baseline":
                            phase.start_soon(probe)
                        else:
                            attack = run_attack(name, grpc_port, "node-1", args.seconds, probe)
                            figures = await attack
                    after = proc_stats(collector.pid)
                    hits1 = await metric_samples(http_port, "metacollector_limit_hits_total")
                    phases[name] = {
                        "healthy p50/p90/p99 ms (n)": quantiles(latencies),
                        "collector cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
                        "collector rss_mb": f"{before['rss_mb']:.0f} -> {after['rss_mb']:.0f}",
                        "limit hits": {
                            re.sub(r'.*limit="([^"]+)".*', r"\1", k): v - hits0.get(k, 0)
                            for k, v in hits1.items()
                            if v != hits0.get(k, 0)
                        },
                        "attacker": figures,
                    }
                    print(name, json.dumps(phases[name]), file=sys.stderr)
                result["phases"] = phases
                if "multiplex" in args.phases:
                    nodes = [f"node-{i}" for i in range(2, 22)]
                    result["multiplex"] = await multiplex(
                        grpc_port, collector.pid, nodes, args.rounds
                    )
                nursery.cancel_scope.cancel()
    finally:
        for p in (collector, emulator):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    return result


def main() -> None:
    sys.path.insert(0, str(HERE.parent))  # run as a script: `bench.multiplex` importable
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--pods-per-node", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds of the multiplex figure")
    ap.add_argument("--attack", choices=sorted(ATTACKS), help="run one attack, print JSON")
    ap.add_argument(
        "--phases", default=",".join([*ATTACKS, "multiplex"]), help="comma-separated subset"
    )
    ap.add_argument("--port", type=int)
    ap.add_argument("--node", default="node-1")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    if args.attack:
        print("ready", flush=True)
        sys.stdin.readline()
        figures = trio.run(ATTACKS[args.attack], "127.0.0.1", args.port, args.node, args.seconds)
        print(json.dumps(figures))
        return
    result = trio.run(bench, args)
    print(
        f"{'phase':<14} {'healthy p50/p90/p99 ms (n)':<30} {'cpu_s':>6} {'rss MB':>11}  limit hits; attacker"
    )
    for name, f in result["phases"].items():
        print(
            f"{name:<14} {f['healthy p50/p90/p99 ms (n)']:<30} {f['collector cpu_s']:>6} "
            f"{f['collector rss_mb']:>11}  {f['limit hits']}; {f['attacker']}"
        )
    print("multiplex (median of rounds):")
    for mode, f in result.get("multiplex", {}).items():
        print(f"  {mode:<15} {f}")
    out = pathlib.Path(args.output or HERE / "results" / "abuse.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
