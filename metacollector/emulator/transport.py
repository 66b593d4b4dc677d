"""The emulator's HTTP/1.1 transport: h11 on trio (TLS optional), keep-alive, one write per
response. Knows nothing of Kubernetes.

A ``Handler`` turns each ``Request`` into a ``Reply`` (a whole body), a ``Stream`` (a chunked
body written as it is produced; it ends the connection's keep-alive cycle) or ``None`` (the
connection is dropped unanswered, like a dead server). Each connection runs in its own cancel
scope, so the application can drop connections (``drop``) except the one asking.
"""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11
import trio

Write = Callable[[bytes], Awaitable[None]]
Producer = Callable[[Write], Awaitable[None]]
_current: contextvars.ContextVar[trio.CancelScope] = contextvars.ContextVar("connection")
_CONNECTION_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    h11.ProtocolError,
    ssl.SSLError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]  # the last value of each parameter
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def agent(self) -> str:
        """The User-Agent's product (``kubectl``, ``metacollector``, ...)."""
        return self.headers.get("user-agent", "").split("/")[0]


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    payload: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Stream:
    """A 200 response with a chunked JSON body: ``produce`` writes the chunks."""

    produce: Producer


class Drop(Exception):
    """Raised by a producer: close the connection without ending the chunked body."""


Handler = Callable[[Request], Awaitable[Reply | Stream | None]]


class Transport:
    def __init__(self, handler: Handler, on_sent: Callable[[Request, int], None]) -> None:
        self.handler = handler
        self.on_sent = on_sent  # bytes written in answer to a request (for the stats)
        self.connections: set[trio.CancelScope] = set()

    def drop(self, keep_current: bool = True) -> None:
        """Drop every open connection (but the one this is called from, if asked)."""
        current = _current.get(None) if keep_current else None
        for scope in list(self.connections):
            if scope is not current:
                scope.cancel()

    async def connection(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection until it closes (``trio.serve_listeners`` handler)."""
        conn = h11.Connection(h11.SERVER)
        with trio.CancelScope() as scope:
            self.connections.add(scope)
            _current.set(scope)
            try:
                await self._requests(stream, conn)
            except _CONNECTION_ERRORS:
                pass
            finally:
                self.connections.discard(scope)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    async def _requests(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        """Requests one after another (keep-alive) until the peer closes or a stream ends."""
        while True:
            request = await _receive(stream, conn)
            if request is None:
                return
            answer = await self.handler(request)
            if answer is None:
                return
            if isinstance(answer, Stream):
                await self._stream(stream, conn, request, answer.produce)
                return
            await self._reply(stream, conn, request, answer)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _send(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: Request, *events: h11.Event
    ) -> None:
        """Serialize ``events`` with h11 and write them with one ``send_all`` (one syscall)."""
        data = b"".join(conn.send(event) or b"" for event in events)
        if data:
            self.on_sent(request, len(data))
            await stream.send_all(data)

    async def _reply(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: Request, reply: Reply
    ) -> None:
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(reply.payload))),
            *reply.headers,
        ]
        await self._send(
            stream,
            conn,
            request,
            h11.Response(status_code=reply.code, headers=headers),
            h11.Data(data=reply.payload),
            h11.EndOfMessage(),
        )

    async def _stream(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: Request, produce: Producer
    ) -> None:
        head = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
        await self._send(stream, conn, request, h11.Response(status_code=200, headers=head))

        async def write(chunk: bytes) -> None:
            await self._send(stream, conn, request, h11.Data(data=chunk))

        try:
            await produce(write)
            await self._send(stream, conn, request, h11.EndOfMessage())
        except Drop:
            return  # the connection is closed without ending the chunked body


async def _receive(stream: trio.abc.Stream, conn: h11.Connection) -> Request | None:
    """The next whole request, or None once the peer has closed."""
    head: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:  # ConnectionClosed or PAUSED
            return None
    assert head is not None
    url = urlsplit(head.target.decode())
    return Request(
        method=head.method.decode(),
        path=url.path,
        query={k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()},
        headers={k.decode().lower(): v.decode() for k, v in head.headers},
        body=body,
    )
