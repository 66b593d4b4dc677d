"""Emulator throughput: list a large cluster in pages, and serve a pod watch under fast churn.

python bench/emulator.py [--nodes 5000 --pods-per-node 30 --rate 1000 --duration 20]
    [--modes rest,store] [--concurrency 32] [--client lean|httpx]

Three processes, so that the bench itself is not what limits the figures: the emulator, a churn
driver and a watch consumer (both are small modes of this script, ``--role churn|watch``). The
consumer follows one cluster-wide pod watch and finds the ``bench-stamp`` label (ns wall-clock
time written by the churn) with a bytes search instead of decoding each 3 KB event.

Churn modes, measured one after the other against the same emulator:
  rest   run_churn writes through REST over keep-alive connections (by default with LeanClient,
         a minimal HTTP/1.1 client: httpx alone costs 1-2 ms of CPU per change here): REST write
         capacity and watch serving together.
  store  the emulator's own in-process churn (POST /admin/churn) commits straight to its store
         with the same stamp: watch serving capacity alone.

Lag = receipt time minus stamp, for ADDED/MODIFIED pod events (a DELETED event carries the old
stamp, so it is counted as an event but not as a lag sample). Events/s and CPU are taken over the
window between the first and the last stamp. CPU is read from /proc for each process, and for
the whole machine (``cores_machine``) to show other load on the box.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec
import trio
from _common import (
    cpu_seconds,
    emulator_command,
    machine_busy_seconds,
    report,
    start_emulator,
    stop,
)

from metacollector.emulator.churn import BENCH_STAMP, ChurnClient, run_churn
from metacollector.testing import free_port

STAMP = f'"{BENCH_STAMP}":"'.encode()
WINDOW_S = 5.0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def watch_role(args: argparse.Namespace) -> None:
    """Follow the pod watch from ``--rv`` until SIGTERM; print receipt/lag samples as JSON."""
    signal.signal(signal.SIGTERM, _stop)
    events = 0
    samples: list[tuple[int, int]] = []  # (receipt ns, lag ns)
    received: list[int] = []  # receipt ns of every event, for events/s
    headers = {"Authorization": f"Bearer {args.token}"}
    try:
        with (
            httpx.Client(
                base_url=args.url, headers=headers, timeout=httpx.Timeout(10, read=None)
            ) as client,
            client.stream(
                "GET", "/api/v1/pods", params={"watch": "1", "resourceVersion": args.rv}
            ) as response,
        ):
            print("watching", flush=True)
            buf = b""
            for chunk in response.iter_raw():
                now = time.time_ns()
                lines = (buf + chunk).split(b"\n")
                buf = lines.pop()
                for line in lines:
                    events += 1
                    received.append(now)
                    if line.startswith(b'{"type":"DELETED"'):
                        continue
                    i = line.find(STAMP)
                    if i >= 0:
                        j = i + len(STAMP)
                        samples.append((now, now - int(line[j : line.index(b'"', j)])))
    except KeyboardInterrupt:
        pass
    json.dump({"events": events, "received": received, "samples": samples}, sys.stdout)
    sys.stdout.flush()


# --- role: REST churn driver -------------------------------------------------------------------
class LeanError(httpx.HTTPError):
    """A failed request of LeanClient (an httpx.HTTPError, which run_churn counts as failed)."""


@dataclass
class LeanResponse:
    status_code: int
    content: bytes

    def raise_for_status(self) -> LeanResponse:
        if self.status_code >= 400:
            raise LeanError(f"HTTP {self.status_code}: {self.content[:200]!r}")
        return self


class LeanClient:
    """Just enough HTTP/1.1 for run_churn (get/post/patch/delete, Content-Length bodies) over
    keep-alive connections, one request at a time per connection. httpx costs 1-2 ms of CPU per
    change on this box, which would make the churn driver, not the emulator, the limit."""

    def __init__(self, url: str, token: str) -> None:
        split = urlsplit(url)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 80
        self.head = f"Host: {split.netloc}\r\nAuthorization: Bearer {token}\r\n"
        self.idle: list[tuple[trio.SocketStream, bytearray]] = []

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = ""
    ) -> LeanResponse:
        head = f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        try:
            stream, buf = self.idle.pop() if self.idle else await self._connect()
            await stream.send_all(head.encode() + b"\r\n" + body)
            while (end := buf.find(b"\r\n\r\n")) < 0:
                buf += await self._receive(stream)
            lines = bytes(buf[:end]).lower().split(b"\r\n")
            length = 0
            for line in lines[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
                elif line.startswith(b"transfer-encoding:"):
                    raise LeanError("chunked responses are not supported")
            while len(buf) < end + 4 + length:
                buf += await self._receive(stream)
            response = LeanResponse(int(lines[0][9:12]), bytes(buf[end + 4 : end + 4 + length]))
            del buf[: end + 4 + length]
        except (OSError, trio.BrokenResourceError, ValueError) as exc:
            raise LeanError(f"{method} {path}: {exc!r}") from None
        self.idle.append((stream, buf))
        return response

    async def _connect(self) -> tuple[trio.SocketStream, bytearray]:
        return await trio.open_tcp_stream(self.host, self.port), bytearray()

    @staticmethod
    async def _receive(stream: trio.SocketStream) -> bytes:
        data = await stream.receive_some(1 << 20)
        if not data:
            raise LeanError("connection closed")
        return bytes(data)

    async def get(self, url: str, *, params: dict[str, Any] | None = None) -> LeanResponse:
        return await self.request("GET", f"{url}?{urlencode(params)}" if params else url)

    async def post(
        self, url: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> LeanResponse:
        content_type = (headers or {}).get("Content-Type", "application/json")
        return await self.request("POST", url, content or b"", content_type)

    async def patch(
        self, url: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> LeanResponse:
        content_type = (headers or {}).get("Content-Type", "application/json")
        return await self.request("PATCH", url, msgspec.json.encode(json), content_type)

    async def delete(self, url: str) -> LeanResponse:
        return await self.request("DELETE", url)

    async def aclose(self) -> None:
        for stream, _ in self.idle:
            await stream.aclose()


def churn_role(args: argparse.Namespace) -> None:
    """run_churn at ``--rate`` for ``--duration`` s over keep-alive connections; print stats."""

    # This process stamps each change just before writing it and holds the whole cluster's
    # pods (the driver lists them): a full GC pass here would stall stamped changes and be
    # counted as latency of what is measured. It runs for seconds: no cyclic GC.
    gc.disable()

    async def churn(client: ChurnClient) -> dict[str, Any]:
        stats = await run_churn(
            client,
            args.rate,
            duration=args.duration,
            concurrency=args.concurrency,
            seed=args.seed,
            stamp_label=BENCH_STAMP,
        )
        return {"done": stats.done, "failed": stats.failed}

    async def run() -> dict[str, Any]:
        if args.client == "lean":
            lean = LeanClient(args.url, args.token)
            try:
                return await churn(lean)
            finally:
                await lean.aclose()
        else:
            async with httpx.AsyncClient(
                base_url=args.url,
                headers={"Authorization": f"Bearer {args.token}"},
                timeout=60,
                limits=httpx.Limits(
                    max_connections=args.concurrency, max_keepalive_connections=args.concurrency
                ),
            ) as client:
                return await churn(client)

    json.dump(trio.run(run), sys.stdout)


# --- orchestration -----------------------------------------------------------------------------
class CpuSampler:
    """Samples the CPU time of named processes and of the whole machine every 0.25 s, so the
    cores each used inside the churn window can be read afterwards."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.samples: list[tuple[int, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            now = {name: cpu_seconds(pid) for name, pid in list(self.pids.items())}
            self.samples.append((time.time_ns(), {**now, "machine": machine_busy_seconds()}))

    def cores(self, start_ns: int, end_ns: int) -> dict[str, float]:
        """Cores used by each process (and the machine) between the samples nearest the window."""
        inside = [s for s in self.samples if start_ns <= s[0] <= end_ns]
        if len(inside) < 2:
            return {}
        (t0, a), (t1, b) = inside[0], inside[-1]
        return {
            f"cores_{name}": round((b[name] - a[name]) / ((t1 - t0) / 1e9), 2)
            for name in b
            if name in a and a[name] > 0 and b[name] > 0
        }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stamp_window(watch: dict[str, Any]) -> tuple[int, int]:
    """The churn's window: its first and last stamp (the driver's own clock, so neither its
    listing before nor its teardown after counts)."""
    stamps = [at - lag for at, lag in watch["samples"]]
    if not stamps:
        raise SystemExit("the watch received no stamped events")
    return min(stamps), max(stamps)


def summarize(watch: dict[str, Any], start_ns: int, end_ns: int) -> dict[str, Any]:
    """Events/s inside the churn window, lag percentiles overall and per 5 s window."""
    lags = [lag / 1e6 for _, lag in watch["samples"]]
    in_window = sum(1 for t in watch["received"] if start_ns <= t <= end_ns)
    windows: list[dict[str, Any]] = []
    t = start_ns
    while t < end_ns:
        w = [lag / 1e6 for at, lag in watch["samples"] if t <= at < t + WINDOW_S * 1e9]
        if w:
            windows.append(
                {
                    "events": len(w),
                    "p50_ms": round(_pct(w, 0.5), 1),
                    "p99_ms": round(_pct(w, 0.99), 1),
                }
            )
        t += int(WINDOW_S * 1e9)
    if not lags:
        return {"watch_events": watch["events"], "watch_stamped_events": 0}
    return {
        "watch_events": watch["events"],
        "watch_events_per_s": round(in_window / ((end_ns - start_ns) / 1e9)),
        "watch_stamped_events": len(lags),
        "watch_lag_ms_p50": round(statistics.median(lags), 1),
        "watch_lag_ms_p99": round(_pct(lags, 0.99), 1),
        "watch_lag_ms_max": round(max(lags), 1),
        "watch_lag_p99_per_5s_ms": [w["p99_ms"] for w in windows],
    }


def start_watch(url: str, token: str, rv: str) -> subprocess.Popen[str]:
    watcher = subprocess.Popen(
        [sys.executable, __file__, "--role", "watch", "--url", url, "--token", token, "--rv", rv],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline().strip() == "watching"
    return watcher


def stop_watch(watcher: subprocess.Popen[str]) -> dict[str, Any]:
    watcher.send_signal(signal.SIGTERM)
    out, _ = watcher.communicate(timeout=60)
    return json.loads(out)  # type: ignore[no-any-return]


def current_rv(client: httpx.Client) -> str:
    r = client.get("/api/v1/pods", params={"limit": "1"})
    r.raise_for_status()
    return str(r.json()["metadata"]["resourceVersion"])


def start_mode(
    url: str, token: str, client: httpx.Client, cpu: CpuSampler
) -> tuple[int, subprocess.Popen[str]]:
    """The resourceVersion before a mode, and its watch consumer (its CPU sampled)."""
    rv0 = int(current_rv(client))
    watcher = start_watch(url, token, str(rv0))
    cpu.pids["watch"] = watcher.pid
    return rv0, watcher


def rest_churn(
    args: argparse.Namespace, url: str, token: str, client: httpx.Client, cpu: CpuSampler
) -> dict[str, Any]:
    rv0, watcher = start_mode(url, token, client, cpu)
    churn = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "churn",
            "--url",
            url,
            "--token",
            token,
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--concurrency",
            str(args.concurrency),
            "--client",
            args.client,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    cpu.pids["churn"] = churn.pid
    out, _ = churn.communicate()
    assert churn.returncode == 0, "churn driver failed"
    time.sleep(2)
    watch = stop_watch(watcher)
    return churn_result(args, json.loads(out), rv0, client, watch, cpu)


def per_change(cores: dict[str, float], rate: float) -> dict[str, float]:
    """CPU ms per achieved change, for each of the bench's processes."""
    return {
        f"cpu_ms_per_change_{name}": round(cores[f"cores_{name}"] * 1000 / rate, 3)
        for name in ("emulator", "churn")
        if f"cores_{name}" in cores and rate
    }


def store_churn(
    args: argparse.Namespace, url: str, token: str, client: httpx.Client, cpu: CpuSampler
) -> dict[str, Any]:
    rv0, watcher = start_mode(url, token, client, cpu)
    cpu.pids.pop("churn", None)
    # another seed than the REST driver's, or both would make the same pod names
    body = {"rate": args.rate, "duration": args.duration, "seed": 8, "stamp_label": BENCH_STAMP}
    r = client.post("/admin/churn", json=body)
    r.raise_for_status()
    time.sleep(args.duration + 2)
    watch = stop_watch(watcher)
    return churn_result(args, client.get("/admin/stats").json()["churn"], rv0, client, watch, cpu)


def churn_result(
    args: argparse.Namespace,
    stats: dict[str, Any],
    rv0: int,
    client: httpx.Client,
    watch: dict[str, Any],
    cpu: CpuSampler,
) -> dict[str, Any]:
    """One mode's row: changes asked and achieved, writes committed, watch figures, CPU."""
    done = sum(stats["done"].values())
    rv1 = int(current_rv(client))
    start_ns, end_ns = stamp_window(watch)
    cores = cpu.cores(start_ns, end_ns)
    return {
        "churn_rate_asked": args.rate,
        "churn_changes_done": done,
        "churn_changes_per_s": round(done / args.duration),
        "churn_failed": stats["failed"],
        "committed_writes": rv1 - rv0,
        **summarize(watch, start_ns, end_ns),
        **cores,
        **per_change(cores, done / args.duration),
    }


def list_all(client: httpx.Client) -> dict[str, Any]:
    start, pages, size, items, cont = time.perf_counter(), 0, 0, 0, ""
    while True:
        r = client.get(
            "/api/v1/pods", params={"limit": 500, **({"continue": cont} if cont else {})}
        )
        r.raise_for_status()
        body = r.json()
        pages, size, items = pages + 1, size + len(r.content), items + len(body["items"])
        cont = body["metadata"].get("continue", "")
        if not cont:
            break
    elapsed = time.perf_counter() - start
    return {
        "list_items": items,
        "list_pages": pages,
        "list_s": round(elapsed, 2),
        "list_pages_per_s": round(pages / elapsed),
        "list_mb": round(size / 2**20, 1),
        "list_mb_per_s": round(size / 2**20 / elapsed, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    port, token = free_port(), "t"
    url = f"http://127.0.0.1:{port}"
    tmp = pathlib.Path(tempfile.mkdtemp())
    t0 = time.monotonic()
    emulator = start_emulator(
        emulator_command(
            port, tmp / "kc", args.nodes, args.pods_per_node, "--history-size=100000", token=token
        )
    )
    result: dict[str, Any] = {
        "pods": args.nodes * args.pods_per_node,
        "emulator_start_s": round(time.monotonic() - t0, 1),
    }
    cpu = CpuSampler()
    cpu.pids["emulator"] = emulator.pid
    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as client:
            result.update(list_all(client))
            for mode in args.modes.split(","):
                print(f"churn mode {mode}", file=sys.stderr, flush=True)
                measure = rest_churn if mode == "rest" else store_churn
                result[mode] = measure(args, url, token, client, cpu)
    finally:
        cpu.stop()
        stop(emulator)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods-per-node", type=int, default=30)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--client",
        choices=("lean", "httpx"),
        default="lean",
        help="the REST churn driver's HTTP client (httpx costs ~1 ms CPU per request here)",
    )
    ap.add_argument("--modes", default="rest,store", help="comma-separated: rest, store")
    ap.add_argument("--role", choices=("main", "watch", "churn"), default="main")
    ap.add_argument("--url", default="")
    ap.add_argument("--token", default="")
    ap.add_argument("--rv", default="")
    ap.add_argument("--seed", type=int, default=7, help="role churn: the change sequence")
    args = ap.parse_args()
    if args.role == "watch":
        return watch_role(args)
    if args.role == "churn":
        return churn_role(args)
    report(run(args), "emulator.json")


if __name__ == "__main__":
    main()
