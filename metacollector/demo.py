"""`metacollector demo`: the real collector against the built-in API server emulator.

Starts the emulator with a small generated cluster and churn, runs the collector against it
(gRPC, probes and metrics on free local ports), and prints, in a readable form, what one node's
Falco sensor would receive, until Ctrl-C (or --duration).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys

import trio

from metacollector.app import serve
from metacollector.emulator.churn import run_churn
from metacollector.emulator.inprocess import running_emulator
from metacollector.grpc.client import WatchEnded, open_watch
from metacollector.kube.config import load_kubeconfig
from metacollector.log import configure_logging
from metacollector.proto import metadata_pb2 as pb
from metacollector.settings import BindAddress, Settings


def describe(event: pb.Event) -> str:
    """One readable line per event."""
    if event.reason == "Delete":
        return f"{event.reason:<6} {event.kind:<21} uid={event.uid}"
    meta = json.loads(event.meta)
    name = f"{meta.get('namespace', '')}/{meta['name']}".lstrip("/")
    line = f"{event.reason:<6} {event.kind:<21} {name}"
    if meta.get("labels"):
        line += " labels=" + ",".join(f"{k}={v}" for k, v in sorted(meta["labels"].items()))
    if event.HasField("status"):
        line += f" status={event.status}"
    if event.HasField("refs"):
        refs = {k: len(v.list) for k, v in sorted(event.refs.resources.items()) if v.list}
        line += " refs=" + ",".join(f"{k}:{n}" for k, n in refs.items())
    return line


async def demo(args: argparse.Namespace) -> None:
    async with (
        running_emulator(nodes=args.nodes, pods_per_node=args.pods_per_node, seed=1) as emulator,
        trio.open_nursery() as nursery,
    ):
        print(f"emulator: {emulator.url}  kubeconfig: {emulator.kubeconfig}", flush=True)
        settings = Settings(
            metrics_bind="127.0.0.1:0",
            health_bind="127.0.0.1:0",
            broker_bind=BindAddress("127.0.0.1", 0),
            log_level="warning",
        )
        running = await nursery.start(
            lambda task_status: serve(
                settings,
                kubeconfig=load_kubeconfig(str(emulator.kubeconfig)),
                task_status=task_status,
            )
        )
        print(
            f"collector: gRPC 127.0.0.1:{running.grpc_port}, "
            f"metrics http://127.0.0.1:{running.metrics_port}/metrics, "
            f"ready http://127.0.0.1:{running.health_port}/readyz",
            flush=True,
        )
        for reflector in running.reflectors:
            await reflector.synced.wait()
        if args.churn_rate > 0:
            nursery.start_soon(run_churn, emulator.client(), args.churn_rate)
        node = args.node or "node-0"
        print(f"events for node {node} (Ctrl-C to stop):", flush=True)
        with trio.move_on_after(args.duration if args.duration else float("inf")):
            async with open_watch("127.0.0.1", running.grpc_port, node) as stream:
                try:
                    async for event in stream.events():
                        print(describe(event), flush=True)
                except WatchEnded as exc:
                    print(f"stream ended: {exc}", flush=True)
        nursery.cancel_scope.cancel()


def run_demo(args: argparse.Namespace) -> int:
    configure_logging("warning", "console")

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop)
                await demo(args)
                nursery.cancel_scope.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
    print("demo stopped", file=sys.stderr)
    return 0
