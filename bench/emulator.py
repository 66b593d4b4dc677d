"""Emulator throughput: list a large cluster in pages, and follow a watch under fast churn.

python bench/emulator.py [--nodes 5000 --pods-per-node 30 --rate 1000 --duration 10]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import trio

from metacollector.emulator.churn import run_churn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    tmp = pathlib.Path(tempfile.mkdtemp())
    t0 = time.monotonic()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metacollector.cli",
            "emulator",
            "--listen",
            f"127.0.0.1:{port}",
            "--write-kubeconfig",
            str(tmp / "kc"),
            "--plain-http",
            "--token",
            "t",
            "--nodes",
            str(args.nodes),
            "--pods-per-node",
            str(args.pods_per_node),
            "--history-size",
            "100000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emulator.stdout is not None
    await trio.to_thread.run_sync(emulator.stdout.readline)
    result: dict[str, object] = {
        "pods": args.nodes * args.pods_per_node,
        "emulator_start_s": round(time.monotonic() - t0, 1),
    }
    headers = {"Authorization": "Bearer t"}
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120
        ) as client:
            start, pages, size, items, cont = time.perf_counter(), 0, 0, 0, ""
            while True:
                r = await client.get(
                    "/api/v1/pods", params={"limit": 500, **({"continue": cont} if cont else {})}
                )
                body = r.json()
                pages, size, items = pages + 1, size + len(r.content), items + len(body["items"])
                cont = body["metadata"].get("continue", "")
                if not cont:
                    break
            elapsed = time.perf_counter() - start
            result.update(
                list_items=items,
                list_pages=pages,
                list_s=round(elapsed, 2),
                list_pages_per_s=round(pages / elapsed),
                list_mb=round(size / 2**20, 1),
                list_mb_per_s=round(size / 2**20 / elapsed, 1),
            )
            rv = body["metadata"]["resourceVersion"]
            received: list[float] = []

            async def watch() -> None:
                async with client.stream(
                    "GET", "/api/v1/pods", params={"watch": "1", "resourceVersion": rv}
                ) as s:
                    buf = b""
                    async for chunk in s.aiter_bytes():
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        now = time.time_ns()
                        for line in lines:
                            labels = json.loads(line)["object"]["metadata"].get("labels") or {}
                            if "bench-stamp" in labels:
                                received.append((now - int(labels["bench-stamp"])) / 1e6)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                churn_client = httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60
                )
                stats = await run_churn(
                    churn_client, args.rate, duration=args.duration, concurrency=64
                )
                await trio.sleep(2)
                nursery.cancel_scope.cancel()
            done = sum(stats.done.values())
            result.update(
                churn_rate_asked=args.rate,
                churn_changes_done=done,
                churn_changes_per_s=round(done / args.duration),
                watch_stamped_events=len(received),
                watch_lag_ms_p50=round(statistics.median(received), 1) if received else None,
                watch_lag_ms_max=round(max(received), 1) if received else None,
            )
    finally:
        emulator.terminate()
        emulator.wait(10)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods-per-node", type=int, default=30)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=10)
    args = ap.parse_args()
    result = trio.run(run, args)
    for k, v in result.items():
        print(f"{k:<24}  {v}")
    (pathlib.Path(__file__).parent / "results" / "emulator.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
