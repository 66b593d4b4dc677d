"""A gRPC server on h2 + trio: connections, streams, flow control, TLS/ALPN, keepalive, GOAWAY.

Invariants:
- One h2 state machine per connection; every socket write goes through ``Connection._flush``,
  which is shielded with a deadline, so cancellation never leaves half a frame on the wire.
- A handler only sends within the peer's flow-control window; a stream that gets no window for
  ``stall_timeout`` seconds ends with UNAVAILABLE (the peer reconnects and resyncs).
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

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from metacollector import metrics
from metacollector.grpc.framing import MessageDecoder, encode_message, status_trailers
from metacollector.grpc.status import GrpcError, Status

log = logging.getLogger("metacollector.grpc.server")


class StartupError(Exception):
    """The server cannot start (busy port, unreadable certificate); one clear line."""


class StreamClosed(Exception):
    """The peer reset or closed the stream."""


class StreamStalled(Exception):
    """No flow-control window opened for ``stall_timeout`` seconds."""


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 10000
    max_streams_per_connection: int = 1024
    max_header_list_size: int = 16384
    max_message_size: int = 4 * 1024 * 1024
    preface_timeout: float = 10.0
    handshake_timeout: float = 10.0
    keepalive_interval: float = 60.0
    keepalive_timeout: float = 20.0
    stall_timeout: float = 30.0
    write_timeout: float = 30.0
    shutdown_timeout: float = 2.0


@dataclass(eq=False)
class ServerStream:
    """One request stream, as a handler sees it."""

    connection: Connection
    stream_id: int
    headers: list[tuple[str, str]]
    peer: tuple[str, int] | None = None
    peer_cert: dict[str, Any] | None = None
    decoder: MessageDecoder = field(default_factory=MessageDecoder)
    messages: list[bytes] = field(default_factory=list)
    headers_sent: bool = False
    ended: bool = False
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

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
    """One HTTP/2 connection: reads frames, dispatches streams, writes under flow control."""

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
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: self.limits.max_streams_per_connection,
                codes.MAX_HEADER_LIST_SIZE: self.limits.max_header_list_size,
            },
        )
        self.streams: dict[int, ServerStream] = {}
        self.window_open = trio.Event()
        self.write_lock = trio.Lock()
        self.closed = False
        self.last_activity = trio.current_time()
        self.ping_outstanding: float | None = None

    # --- writing ---------------------------------------------------------------------------
    async def _flush(self) -> None:
        data = self.h2.data_to_send()
        if not data or self.closed:
            return
        async with self.write_lock:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.limits.write_timeout
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self.closed = True
            if scope.cancelled_caught:
                self.closed = True
                metrics.PROTOCOL_ERRORS.labels("write_timeout").inc()

    async def send_data(self, st: ServerStream, data: bytes) -> None:
        try:
            await self._send_data(st, data)
        except h2.exceptions.ProtocolError:  # the connection closed under us (GOAWAY, reset)
            raise StreamClosed() from None

    async def _send_data(self, st: ServerStream, data: bytes) -> None:
        if st.ended or self.closed:
            raise StreamClosed()
        if not st.headers_sent:
            self._send_response_headers(st)
        offset = 0
        while offset < len(data):
            if st.ended or self.closed:
                raise StreamClosed()
            window = self.h2.local_flow_control_window(st.stream_id)
            if window <= 0:
                self.window_open = trio.Event()
                with trio.move_on_after(self.limits.stall_timeout):
                    while self.h2.local_flow_control_window(st.stream_id) <= 0:
                        if st.ended or self.closed:
                            raise StreamClosed()
                        await self.window_open.wait()
                        self.window_open = trio.Event()
                    continue
                raise StreamStalled()
            frame_size = self.h2.max_outbound_frame_size
            end = offset + min(window, len(data) - offset)
            while offset < end:
                chunk = data[offset : min(end, offset + frame_size)]
                self.h2.send_data(st.stream_id, chunk)
                offset += len(chunk)
            await self._flush()
        if self.closed:
            raise StreamClosed()

    def _send_response_headers(self, st: ServerStream) -> None:
        self.h2.send_headers(
            st.stream_id, [(":status", "200"), ("content-type", "application/grpc")]
        )
        st.headers_sent = True

    def _end_stream(self, st: ServerStream, status: Status, message: str = "") -> None:
        """Queue the stream's final status (trailers, or a trailers-only response)."""
        if st.ended or self.closed:
            return
        st.ended = True
        metrics.GRPC_STREAMS_ENDED.labels(status.name).inc()
        trailers = status_trailers(status, message)
        try:
            if st.headers_sent:
                self.h2.send_headers(st.stream_id, trailers, end_stream=True)
            else:
                self.h2.send_headers(
                    st.stream_id,
                    [(":status", "200"), ("content-type", "application/grpc"), *trailers],
                    end_stream=True,
                )
        except h2.exceptions.StreamClosedError:
            pass
        self.streams.pop(st.stream_id, None)

    # --- reading ---------------------------------------------------------------------------
    async def run(self, nursery: trio.Nursery) -> None:
        """Serve this connection until the peer goes, it breaks the protocol, or shutdown."""
        self.h2.initiate_connection()
        await self._flush()
        with trio.move_on_after(self.limits.preface_timeout) as preface:
            while not await self._receive(nursery, preface=True):
                pass
        if preface.cancelled_caught:
            metrics.PROTOCOL_ERRORS.labels("preface_timeout").inc()
            return
        nursery.start_soon(self._keepalive)
        while not self.closed and not await self._receive(nursery, preface=False):
            pass

    async def _receive(self, nursery: trio.Nursery, *, preface: bool) -> bool:
        """Read and handle one chunk. Returns True when the preface is done (``preface``) or,
        after it, when the connection should stop."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            self.closed = True
            return True
        self.last_activity = trio.current_time()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            reason = type(exc).__name__
            metrics.PROTOCOL_ERRORS.labels(reason).inc()
            log.info("closing connection after protocol error", extra={"error": str(exc)[:200]})
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
            await self._flush()
            self.closed = True
            return True
        settled = False
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                settled = True
                self.window_open.set()
            self._handle(event, nursery)
        await self._flush()
        if preface:
            return settled or self.closed
        return self.closed

    def _handle(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            st = self.streams.get(event.stream_id)
            if st is not None and not st.ended:
                try:
                    st.messages.extend(st.decoder.feed(event.data))
                    if len(st.messages) > 1:
                        raise GrpcError(Status.INVALID_ARGUMENT, "expected one request message")
                except GrpcError as exc:
                    self._end_stream(st, exc.status, exc.message)
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None and not st.ended:
                try:
                    st.decoder.end()
                    if len(st.messages) != 1:
                        raise GrpcError(Status.INVALID_ARGUMENT, "expected one request message")
                except GrpcError as exc:
                    self._end_stream(st, exc.status, exc.message)
                else:
                    nursery.start_soon(self._run_handler, st)
        elif isinstance(event, h2.events.StreamReset):
            st = self.streams.pop(event.stream_id, None)
            if st is not None:
                st.ended = True
                st.cancel_scope.cancel()
                metrics.GRPC_STREAMS_ENDED.labels("CANCELLED").inc()
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_open.set()
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_outstanding = None
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True
            self._cancel_all()

    def _request(self, event: h2.events.RequestReceived) -> None:
        headers = [(str(k), str(v)) for k, v in event.headers or ()]
        h = dict(headers)
        sid = event.stream_id
        st = ServerStream(
            self,
            sid,
            headers,
            self.peer,
            self.peer_cert,
            MessageDecoder(self.limits.max_message_size),
        )
        if h.get(":method") != "POST":
            self.h2.send_headers(sid, [(":status", "405")], end_stream=True)
            return
        content_type = h.get("content-type", "")
        if not content_type.startswith("application/grpc"):
            self.h2.send_headers(
                sid,
                [
                    (":status", "415"),
                    ("content-type", "text/plain"),
                    *status_trailers(
                        Status.INTERNAL, f"invalid gRPC content-type {content_type!r}"
                    ),
                ],
                end_stream=True,
            )
            return
        self.streams[sid] = st
        if h.get(":path", "") not in self.server.handlers:
            self._end_stream(st, Status.UNIMPLEMENTED, f"unknown method {h.get(':path')}")

    async def _run_handler(self, st: ServerStream) -> None:
        handler = self.server.handlers[dict(st.headers)[":path"]]
        status, message = Status.OK, ""
        with st.cancel_scope:
            try:
                await handler(st.messages[0], st)
            except GrpcError as exc:
                status, message = exc.status, exc.message
            except StreamStalled:
                status, message = Status.UNAVAILABLE, "subscriber too slow: no flow-control window"
            except StreamClosed:
                return
            except Exception:
                log.exception("handler failed", extra={"path": dict(st.headers)[":path"]})
                status, message = Status.INTERNAL, "internal error"
            self._end_stream(st, status, message)
            await self._flush()

    async def _keepalive(self) -> None:
        period = self.limits.keepalive_interval / 4
        # A random phase: connections opened together (a fleet of sensors starting or
        # reconnecting) would otherwise wake together every period, and the timer objects of
        # thousands of sleeping checks, all young at once, made one 50-100 ms GC pause.
        await trio.sleep(period * random.random())
        while not self.closed:
            await trio.sleep(period)
            now = trio.current_time()
            if self.ping_outstanding is not None:
                if now - self.ping_outstanding > self.limits.keepalive_timeout:
                    metrics.PROTOCOL_ERRORS.labels("keepalive_timeout").inc()
                    self.closed = True
                    self._cancel_all()
                    await self.stream.aclose()
                    return
            elif now - self.last_activity > self.limits.keepalive_interval:
                self.ping_outstanding = now
                self.h2.ping(b"mcollect")
                await self._flush()

    def _cancel_all(self) -> None:
        for st in list(self.streams.values()):
            st.ended = True
            st.cancel_scope.cancel()
        self.window_open.set()

    async def shutdown(self) -> None:
        """End every open stream with UNAVAILABLE, then GOAWAY."""
        for st in list(self.streams.values()):
            self._end_stream(st, Status.UNAVAILABLE, "server shutting down")
            st.cancel_scope.cancel()
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            await self._flush()
        self.closed = True


class GrpcServer:
    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        limits: ServerLimits = ServerLimits(),
    ) -> None:
        self.handlers = dict(handlers)
        self.ssl_context = ssl_context
        self.limits = limits
        self.connections: set[Connection] = set()

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
            nursery.start_soon(self._connection, stream)

    async def _connection(self, tcp: trio.SocketStream) -> None:
        try:
            peer = tcp.socket.getpeername()[:2]
        except OSError:
            return
        stream: trio.abc.Stream = tcp
        peer_cert = None
        try:
            if self.ssl_context is not None:
                ctx = self.ssl_context() if callable(self.ssl_context) else self.ssl_context
                tls = trio.SSLStream(tcp, ctx, server_side=True)
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
            conn = Connection(self, stream, peer, peer_cert)
            self.connections.add(conn)
            metrics.GRPC_CONNECTIONS.inc()
            try:
                async with trio.open_nursery() as nursery:
                    await conn.run(nursery)
                    conn.closed = True
                    conn._cancel_all()
                    nursery.cancel_scope.cancel()
            finally:
                self.connections.discard(conn)
                metrics.GRPC_CONNECTIONS.dec()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            metrics.PROTOCOL_ERRORS.labels("transport").inc()
            log.debug("connection failed", extra={"error": str(exc)})
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
