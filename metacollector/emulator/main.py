"""`metacollector emulator`: run the API server emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from metacollector.emulator.churn import run_churn
from metacollector.emulator.inprocess import (
    EmulatorHandle,
    kubeconfig_text,
    load_cluster,
    self_signed,
)
from metacollector.emulator.server import Emulator, Faults
from metacollector.gcpolicy import freeze_heap


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8001", help="HOST:PORT to serve on")
    p.add_argument("--write-kubeconfig", default=None, help="write a kubeconfig for clients here")
    p.add_argument("--token", default="emulator-token", help="the bearer token clients must send")
    p.add_argument("--nodes", type=int, default=0)
    p.add_argument("--pods-per-node", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--churn-rate", type=float, default=0.0, help="changes per second")
    p.add_argument(
        "--churn-mode",
        choices=("rest", "store"),
        default="rest",
        help="churn through REST like any client (rest), or commit straight to the store "
        "in-process (store: measures watch serving apart from REST write capacity)",
    )
    p.add_argument("--history-size", type=int, default=10000)
    p.add_argument("--bookmark-interval", type=float, default=60.0)
    p.add_argument(
        "--no-streaming-lists",
        action="store_true",
        help="answer sendInitialEvents with 422, like servers without WatchList",
    )
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="serve plain HTTP (clients such as kubectl send no token over it)",
    )
    p.add_argument(
        "--drop-watch-after", type=int, default=0, help="fault: drop watches after N events"
    )
    p.add_argument(
        "--slow-write-delay", type=float, default=0.0, help="fault: delay per watch write (s)"
    )


def main(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    ctx, ca_pem = (None, None) if args.plain_http else self_signed(host.strip("[]") or "127.0.0.1")
    emulator = Emulator(
        token=args.token,
        history_size=args.history_size,
        bookmark_interval=args.bookmark_interval,
        streaming_lists=not args.no_streaming_lists,
        ssl_context=ctx,
        faults=Faults(
            drop_watch_after=args.drop_watch_after, slow_write_delay=args.slow_write_delay
        ),
    )
    load_cluster(emulator, args.nodes, args.pods_per_node, args.seed)
    # The generated cluster is millions of long-lived objects: keep them out of the cyclic
    # GC's full collections, which would otherwise stall every watch for a second or more. (One
    # collection first: it also sets the baseline that makes the next full one rare.)
    freeze_heap()

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    emulator.serve, host.strip("[]") or "127.0.0.1", int(port)
                )
                url = f"{'https' if ctx else 'http'}://{host or '127.0.0.1'}:{bound}"
                if args.write_kubeconfig:
                    Path(args.write_kubeconfig).write_text(kubeconfig_text(url, args.token, ca_pem))
                print(
                    f"emulator listening on {url} (rv {emulator.store.rv})"
                    + (f", kubeconfig {args.write_kubeconfig}" if args.write_kubeconfig else ""),
                    flush=True,
                )
                if args.churn_rate > 0 and args.churn_mode == "store":
                    emulator.start_churn(args.churn_rate)
                elif args.churn_rate > 0:
                    handle = EmulatorHandle(
                        url, args.token, Path(args.write_kubeconfig or "-"), emulator
                    )
                    nursery.start_soon(_churn, handle, args.churn_rate)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    trio.run(run)
    print("emulator stopped", file=sys.stderr)
    return 0


async def _churn(handle: EmulatorHandle, rate: float) -> None:
    async with handle.client() as client:
        await run_churn(client, rate)
