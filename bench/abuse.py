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

The attack functions are importable (tests/grpc/test_abuse.py uses them). ``--attack NAME``
runs one attack in this process and prints its figures as JSON (how the bench runs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import trio

from metacollector.grpc.client import open_watch
from metacollector.grpc.framing import encode_message
from metacollector.proto import metadata_pb2 as pb

HERE = pathlib.Path(__file__).parent
PY = sys.executable
WATCH = "/metadata.Metadata/Watch"
STAMP = "abuse-stamp"


# --- attackers (raw h2 over TCP) ----------------------------------------------------------------


def h2_client(window: int = 65535) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    conn.initiate_connection()
    return conn


def request_headers(method: str = "POST") -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "http"),
        (":path", WATCH),
        (":authority", "abuse"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


KINDS = ("Pod", "Namespace", "Deployment", "Service", "ReplicaSet", "ReplicaController")


def selector(node: str) -> bytes:
    request = pb.Selector(nodeName=node, resourceKinds={k: "true" for k in KINDS})
    return encode_message(request.SerializeToString())


class Raw:
    """One attacking connection: an h2 client over TCP, noting what the server said."""

    def __init__(self, tcp: trio.SocketStream, conn: h2.connection.H2Connection) -> None:
        self.tcp, self.h2 = tcp, conn
        self.goaway: int | None = None  # the GOAWAY error code received, if any
        self.closed = False  # the server closed (EOF on reading)
        self.broken = False  # writing failed (what was sent before may still be read)
        self.data_frames = 0
        self.data_bytes = 0

    @classmethod
    async def open(cls, host: str, port: int, window: int = 65535) -> Raw:
        conn = h2_client(window)
        tcp = await trio.open_tcp_stream(host, port)
        raw = cls(tcp, conn)
        await raw.flush()
        return raw

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.broken:
            try:
                await self.tcp.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.broken = True

    async def read(self, timeout: float) -> list[h2.events.Event]:
        """One read (or none within ``timeout``); PINGs/SETTINGS answered by h2 on flush."""
        data = b""
        with trio.move_on_after(timeout):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = await self.tcp.receive_some(1 << 16)
            if not data:
                self.closed = True
        if not data:
            return []
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return []
        for e in events:
            if isinstance(e, h2.events.ConnectionTerminated):
                self.goaway = int(e.error_code or 0)
            elif isinstance(e, h2.events.DataReceived):
                self.data_frames += 1
                self.data_bytes += len(e.data or b"")
        return events

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.tcp)


async def half_sent(
    host: str, port: int, *, connections: int = 4, streams: int = 40, hold: float = 5.0
) -> dict[str, Any]:
    """Each stream announces a 60 KB request message (under the 64 KiB limit) and sends all
    of it the windows allow, except its end, then holds the connection for ``hold`` seconds."""
    body = encode_message(b"y" * 60000)[:-100]
    out = {"bytes_sent": 0, "goaways": 0, "refused": 0}

    async def one() -> None:
        raw = await Raw.open(host, port)
        await raw.read(1.0)  # the server's SETTINGS
        sent: dict[int, int] = {}
        for _ in range(streams):
            sid = raw.h2.get_next_available_stream_id()
            raw.h2.send_headers(sid, request_headers())
            sent[sid] = 0
        deadline = trio.current_time() + hold
        while trio.current_time() < deadline and not raw.closed:
            for sid in sent:
                room = min(raw.h2.local_flow_control_window(sid), len(body) - sent[sid])
                for offset in range(0, room, 16384):
                    chunk = body[sent[sid] : sent[sid] + min(16384, room - offset)]
                    raw.h2.send_data(sid, chunk)
                    sent[sid] += len(chunk)
            await raw.flush()
            for e in await raw.read(0.2):
                if isinstance(e, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    out["refused"] += 1
            await raw.flush()
        out["bytes_sent"] += sum(sent.values())
        out["goaways"] += raw.goaway is not None
        await raw.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    return out


async def one_byte_windows(
    host: str, port: int, node: str, *, clients: int = 3, seconds: float = 10.0
) -> dict[str, Any]:
    """Clients with a 1-byte initial window asking for a big view, each topping its stream and
    connection windows up by one byte per DATA frame received, or every millisecond."""
    out: dict[str, Any] = {"data_frames": 0, "data_bytes": 0, "updates": 0, "goaways": []}

    async def one() -> None:
        raw = await Raw.open(host, port, window=1)
        sid = raw.h2.get_next_available_stream_id()
        raw.h2.send_headers(sid, request_headers())
        raw.h2.send_data(sid, selector(node), end_stream=True)
        await raw.flush()
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline and not raw.closed and raw.goaway is None:
            events = await raw.read(0.001)
            if any(isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) for e in events):
                break
            try:
                raw.h2.increment_flow_control_window(1, stream_id=sid)
                raw.h2.increment_flow_control_window(1)
            except h2.exceptions.ProtocolError:
                break
            out["updates"] += 2
            await raw.flush()
        out["data_frames"] += raw.data_frames
        out["data_bytes"] += raw.data_bytes
        out["goaways"].append(raw.goaway)
        await raw.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one)
    return out


async def rapid_reset(host: str, port: int, *, streams: int = 20000) -> dict[str, Any]:
    """Open a stream with a whole request and reset it at once, ``streams`` times, in writes of
    100, reading what comes back; stops at the server's GOAWAY."""
    raw = await Raw.open(host, port)
    await raw.read(1.0)
    body = selector("node-0")
    sent = 0
    started = time.monotonic()
    while sent < streams and not raw.broken and not raw.closed and raw.goaway is None:
        for _ in range(100):
            sid = raw.h2.get_next_available_stream_id()
            raw.h2.send_headers(sid, request_headers())
            raw.h2.send_data(sid, body, end_stream=True)
            raw.h2.reset_stream(sid)
            sent += 1
        await raw.flush()
        await raw.read(0)
    with trio.move_on_after(2):
        while not raw.closed and raw.goaway is None:
            await raw.read(0.5)
    await raw.aclose()
    return {"streams_sent": sent, "goaway": raw.goaway, "seconds": time.monotonic() - started}


def nghttp2_tool(name: str) -> str | None:
    """``h2load``/``nghttp`` from Debian's nghttp2-client, installed when missing (as root)."""
    if shutil.which(name) is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "nghttp2-client"], capture_output=True, timeout=300
        )
    return shutil.which(name)


async def h2load_flood(
    host: str, port: int, *, connections: int = 50, streams: int = 50, requests: int = 100000
) -> dict[str, Any]:
    """h2load: ``connections`` x ``streams`` concurrent GET requests (invalid for gRPC)."""
    h2load = nghttp2_tool("h2load")
    if h2load is None:
        return {"skipped": "h2load (nghttp2-client) not available"}
    started = time.monotonic()
    done = await trio.run_process(
        [
            h2load,
            "-n",
            str(requests),
            "-c",
            str(connections),
            "-m",
            str(streams),
            f"http://{host}:{port}{WATCH}",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    text = done.stdout.decode(errors="replace")
    match = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", text
    )
    figures = (
        dict(
            zip(
                ["total", "started", "done", "succeeded", "failed"],
                map(int, match.groups()),
                strict=True,
            )
        )
        if match
        else {}
    )
    return {"seconds": round(time.monotonic() - started, 2), **figures}


ATTACKS = {
    "half_sent": lambda host, port, node, seconds: half_sent(host, port, hold=seconds),
    "one_byte": lambda host, port, node, seconds: one_byte_windows(
        host, port, node, seconds=seconds
    ),
    "rapid_reset": lambda host, port, node, seconds: rapid_reset(host, port),
    "h2load_flood": lambda host, port, node, seconds: h2load_flood(host, port),
}


# --- the bench: emulator + collector processes, healthy subscriber, attacks ----------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stats(pid: int) -> dict[str, float]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "cpu_s": (int(stat[11]) + int(stat[12])) / tick,
    }


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
        [
            PY,
            "-m",
            "metacollector.cli",
            "run",
            "--kubeconfig",
            str(kubeconfig),
            "--broker-bind-address",
            f"127.0.0.1:{grpc_port}",
            "--metrics-bind-address",
            f"127.0.0.1:{http_port}",
            "--health-probe-bind-address",
            f"127.0.0.1:{http_port}",
            "--log-level",
            "error",
        ],
    )
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, shared with other work"}
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{emu_port}", headers={"Authorization": "Bearer t"}
        ) as api:
            with trio.fail_after(120):
                while True:
                    try:
                        r = await api.get(f"http://127.0.0.1:{http_port}/readyz")
                        if r.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
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
