"""A gRPC server on h2 + trio: connections, streams, flow control, TLS/ALPN, keepalive, GOAWAY.

Invariants:
- The protocol (lifecycle, flow control, limits, budgets) is decided by the sans-I/O
  ``protocol.ConnectionCore``; this module only moves bytes, runs handlers, wakes senders.
- Every socket write goes through ``Connection._flush``, which is shielded with a deadline, so
  cancellation never leaves half a frame on the wire.
- A handler only sends within the peer's flow-control window; a stream that gets no useful
  window for ``stall_timeout`` seconds ends with UNAVAILABLE (the peer reconnects and resyncs).
- A connection's failure (protocol error, reset, timeout) is confined to that connection.
- Shutdown (cancelling ``serve``): every open stream ends with UNAVAILABLE, then GOAWAY, within
  ``shutdown_timeout``; only then are the connection tasks cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from metacollector import metrics
from metacollector.grpc.framing import encode_message
from metacollector.grpc.protocol import (
    ConnectionCore,
    Counters,
    Lifecycle,
    Outcome,
    Rate,
    RequestPool,
    SendState,
    ServerLimits,
    StreamCore,
)
from metacollector.grpc.status import GrpcError, Status

__all__ = [
    "GrpcServer",
    "Handler",
    "ServerLimits",
    "ServerStream",
    "StartupError",
    "StreamClosed",
    "StreamStalled",
    "server_ssl_context",
]

log = logging.getLogger("metacollector.grpc.server")


class StartupError(Exception):
    """The server cannot start (busy port, unreadable certificate); one clear line."""


class StreamClosed(Exception):
    """The peer reset or closed the stream."""


class StreamStalled(Exception):
    """No useful flow-control window opened for ``stall_timeout`` seconds."""


@dataclass(eq=False)
class ServerStream:
    """One request stream, as a handler sees it."""

    connection: Connection
    core: StreamCore
    peer: tuple[str, int] | None = None
    peer_cert: dict[str, Any] | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Set and replaced only by the waker (Connection._wake): a sender that checked its window
    # and then waits on the event it read cannot miss a wake-up in between.
    wakeup: trio.Event = field(default_factory=trio.Event)

    @property
    def stream_id(self) -> int:
        return self.core.stream_id

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.core.headers

    async def send_messages(self, payloads: Sequence[bytes]) -> None:
        """Send messages, several per DATA frame, within flow control (see module invariants)."""
        await self.connection.send_data(self, b"".join(encode_message(p) for p in payloads))


Handler = Callable[[bytes, ServerStream], Awaitable[None]]


def server_ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """TLS >= 1.2 with ALPN h2; client certificates required when ``client_ca`` is given."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    for flag, path in (
        ("--broker-server-cert", cert),
        ("--broker-server-key", key),
        ("--broker-client-ca", client_ca),
    ):
        if path is not None and not os.access(path, os.R_OK):
            raise StartupError(f"{flag}: file not found or not readable: {path}")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(f"cannot load client CA {client_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Connection:
    """The I/O side of one HTTP/2 connection: moves bytes between the socket and its
    ``ConnectionCore``, runs handlers, and wakes senders the core names."""

    def __init__(
        self,
        server: GrpcServer,
        stream: trio.abc.Stream,
        peer: tuple[str, int] | None,
        peer_cert: dict[str, Any] | None,
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.peer = peer
        self.peer_cert = peer_cert
        self.core = ConnectionCore(
            server.limits,
            server.request_pool,
            server.handlers,
            trio.current_time(),
            server.counters,
            server.process_errors,
            random.random() * server.limits.keepalive_interval / 4,
        )
        self.handles: dict[int, ServerStream] = {}
        self.served = False  # a request of this connection has reached its handler
        self._nursery: trio.Nursery | None = None  # handlers' and timers' while it runs
        self.write_lock = trio.Lock()
        self.scope = trio.CancelScope()

    @property
    def closed(self) -> bool:
        return self.core.closed

    # --- writing ---------------------------------------------------------------------------
    async def _flush(self) -> None:
        """Write what the core queued. Shielded with a deadline, so cancellation never leaves
        half a frame on the wire; also each sender's turn boundary (a checkpoint)."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.limits.write_timeout
            async with self.write_lock:
                data = self.core.data_to_send()
                if not data:
                    return
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._apply(self.core.close("transport"))
        if scope.cancelled_caught:
            self._apply(self.core.close("write_timeout"))

    async def send_data(self, ss: ServerStream, data: bytes) -> None:
        core, st = self.core, ss.core
        core.begin_send(st, trio.current_time())
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            sent = core.take_turn(st, view[offset:], trio.current_time())
            if st.send is SendState.ENDED:
                raise StreamClosed()
            if sent:
                offset += sent
                await self._flush()  # the turn ends: siblings blocked on the window go next
                continue
            wakeup = ss.wakeup  # read after the window check: no lost wake-up in between
            with trio.move_on_at(core.stall_deadline(st)):
                await wakeup.wait()
            if trio.current_time() >= core.stall_deadline(st) and st.send in _BLOCKED:
                raise StreamStalled()
        if st.send is SendState.ENDED:
            raise StreamClosed()

    def _apply(self, out: Outcome) -> None:
        """Carry out what the core decided: start and cancel handlers, wake senders."""
        for st in out.wake:
            ss = self.handles.get(st.stream_id)
            if ss is not None:
                old, ss.wakeup = ss.wakeup, trio.Event()
                old.set()
        for st in out.cancel:
            ss = self.handles.pop(st.stream_id, None)
            if ss is not None:
                ss.cancel_scope.cancel()
        for st in out.start:
            if st.send is not SendState.ENDED and self._nursery is not None:
                self.served = True
                ss = ServerStream(self, st, self.peer, self.peer_cert)
                self.handles[st.stream_id] = ss
                self._nursery.start_soon(self._run_handler, ss)
        if self.core.lifecycle is Lifecycle.CLOSED:
            self.scope.cancel()

    # --- reading ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve this connection until the peer goes, it breaks the protocol, or shutdown."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with self.server.probation:
                    self.core.initiate()
                    await self._flush()
                await self._read()
                nursery.cancel_scope.cancel()
        self._nursery = None
        if self.core.lifecycle is not Lifecycle.CLOSED:
            self.core.close("shutdown")
        for ss in list(self.handles.values()):
            ss.cancel_scope.cancel()
        self.handles.clear()

    async def _read(self) -> None:
        while self.core.lifecycle is not Lifecycle.CLOSED:
            data: bytes | bytearray = b""
            with trio.move_on_at(self.core.read_deadline()) as deadline:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    data = await self.stream.receive_some(READ_BYTES)
            if self.served:
                await self._handle_read(data, deadline.cancelled_caught)
            else:
                # On probation until a request of it reached a handler: the input of new
                # connections is handled a few at a time process-wide, so a flood of them
                # (h2load, rapid reset) cannot fill one scheduler round with its work.
                async with self.server.probation:
                    await self._handle_read(data, deadline.cancelled_caught)

    async def _handle_read(self, data: bytes | bytearray, timed_out: bool) -> None:
        now = trio.current_time()
        if timed_out:
            self._apply(self.core.tick(now))
        elif data:
            self._apply(self.core.receive(bytes(data), now))
        else:
            self._apply(self.core.eof())
        await self._flush()

    async def _run_handler(self, ss: ServerStream) -> None:
        st = ss.core
        handler = self.server.handlers[st.path]
        status, message = Status.OK, ""
        request = st.request
        assert request is not None
        with ss.cancel_scope:
            try:
                await handler(request, ss)
            except GrpcError as exc:
                status, message = exc.status, exc.message
            except StreamStalled:
                status, message = Status.UNAVAILABLE, "subscriber too slow: no flow-control window"
            except StreamClosed:
                return
            except Exception:
                log.exception("handler failed", extra={"path": st.path})
                status, message = Status.INTERNAL, "internal error"
            self.handles.pop(st.stream_id, None)
            self._apply(self.core.end_stream(st, status, message, trio.current_time()))
            await self._flush()

    async def shutdown(self) -> None:
        """End every open stream with UNAVAILABLE, then GOAWAY."""
        self._apply(self.core.shutdown())
        await self._flush()
        self._apply(self.core.close("shutdown"))


_BLOCKED = (SendState.BLOCKED_STREAM, SendState.BLOCKED_CONNECTION)
# Bytes handled per read: a flood of small frames is handled a slice at a time, with the other
# connections' turns in between (clients send little else: one request, window updates).
READ_BYTES = 16 * 1024


class GrpcServer:
    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.handlers = dict(handlers)
        self.ssl_context = ssl_context
        self.limits = limits = limits or ServerLimits()
        self.connections: set[Connection] = set()
        self.request_pool = RequestPool(limits.max_buffered_request_bytes)
        errors = limits.process_errors_per_second
        self.process_errors = Rate(errors, errors * limits.burst_seconds)
        self.probation = trio.CapacityLimiter(limits.probation_concurrency)
        self.counters = Counters()

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on host:port and serve until cancelled; then shut down gracefully."""
        try:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
        except OSError as exc:
            raise StartupError(
                f"cannot listen for gRPC on {host or '*'}:{port}: {exc.strerror or exc}"
            ) from None
        bound = listeners[0].socket.getsockname()[1]
        connections_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as outer:
            outer.start_soon(self._serve_listeners, listeners, connections_scope)
            task_status.started(bound)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.limits.shutdown_timeout
                    for listener in listeners:
                        await listener.aclose()
                    async with trio.open_nursery() as closing:
                        for conn in list(self.connections):
                            closing.start_soon(conn.shutdown)
                connections_scope.cancel()

    async def _serve_listeners(
        self, listeners: list[trio.SocketListener], scope: trio.CancelScope
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                metrics.LIMIT_HITS.labels("accept_error").inc()
                log.warning("accept failed", extra={"error": str(exc)})
                await trio.sleep(0.1)
                continue
            if len(self.connections) >= self.limits.max_connections:
                metrics.LIMIT_HITS.labels("connections").inc()
                await stream.aclose()
                continue
            try:
                peer = stream.socket.getpeername()[:2]
            except OSError:
                await stream.aclose()
                continue
            nursery.start_soon(self._connection, stream, peer)

    async def _connection(self, transport: trio.abc.Stream, peer: tuple[str, int] | None) -> None:
        """Serve one accepted transport: TLS handshake (when configured), then HTTP/2."""
        stream = transport
        peer_cert = None
        try:
            if self.ssl_context is not None:
                ctx = self.ssl_context() if callable(self.ssl_context) else self.ssl_context
                tls = trio.SSLStream(transport, ctx, server_side=True)
                with trio.move_on_after(self.limits.handshake_timeout) as handshake:
                    await tls.do_handshake()
                if handshake.cancelled_caught:
                    metrics.PROTOCOL_ERRORS.labels("handshake_timeout").inc()
                    return
                if tls.selected_alpn_protocol() != "h2":
                    metrics.PROTOCOL_ERRORS.labels("alpn").inc()
                    return
                peer_cert = tls.getpeercert()
                stream = tls
            async with self.probation:  # a flood of new connections is set up a few at a time
                conn = Connection(self, stream, peer, peer_cert)
            self.connections.add(conn)
            metrics.GRPC_CONNECTIONS.inc()
            try:
                await conn.run()
            finally:
                self.connections.discard(conn)
                self.counters.connections_closed += 1
                metrics.GRPC_CONNECTIONS.dec()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            metrics.PROTOCOL_ERRORS.labels("transport").inc()
            log.debug("connection failed", extra={"error": str(exc)})
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
