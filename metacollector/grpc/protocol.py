"""Sans-I/O core of one server-side HTTP/2 connection carrying gRPC: no sockets, no tasks.

As in h11 and grpclib, protocol state lives in one object the I/O layer (``server.py``) feeds
bytes and asks for bytes; the clock is passed in. Its state:
- one lifecycle, ``Lifecycle``: HANDSHAKE (until the client's SETTINGS), OPEN, DRAINING (our
  GOAWAY sent, streams ended), CLOSED; every way a connection ends goes through ``_close``.
- per stream, a ``SendState``: IDLE (no response headers yet), OPEN, BLOCKED_STREAM or
  BLOCKED_CONNECTION (which window a sender waits for), ENDED.
- h2 events are dispatched through one table, ``_HANDLERS``.

Invariants it owns:
- Flow control: a sender blocked on the connection window is woken by every useful connection
  WINDOW_UPDATE (or SETTINGS change), one blocked on its stream window by that stream's; a woken
  sender re-checks both (``take_turn``). A turn sends at most ``TURN_BYTES`` so streams of one
  connection alternate; data goes out only in useful pieces (``useful``), never in slivers.
- Requests are bounded where they arrive: DATA is acknowledged only once its message is
  decoded, so a connection holds at most its receive window (``connection_window``) and the
  process at most ``RequestPool.limit`` of undecoded request bytes.
- Per-connection budgets (new streams, peer resets, error responses, tiny WINDOW_UPDATEs per
  second): over one, the connection gets GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import TypeVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from metacollector import metrics
from metacollector.grpc.framing import MessageDecoder, status_trailers
from metacollector.grpc.status import GrpcError, Status

TURN_BYTES = 16 * 1024  # most one stream sends before the others on its connection get a turn
# ... unless what is left after it is less than half a turn: the Watch handler's batches are a
# few hundred bytes over 16 KiB, and cutting each at 16 KiB cost a second write for a sliver
# (2x the server's CPU per message for a fast subscriber, bench/grpc_peers.py).
MAX_TURN_BYTES = TURN_BYTES + TURN_BYTES // 2
USEFUL_BYTES = 16 * 1024  # a window smaller than this (and than what is pending) is waited out
MIN_USEFUL_BYTES = 1024  # ... unless the peer's initial window is smaller, but never below this
GRPC_PREFIX = 5  # bytes of the gRPC message prefix
RECEIVE_SLICE = 512  # bytes handed to h2 at a time (~25 small HEADERS frames)

log = logging.getLogger("metacollector.grpc.server")
T = TypeVar("T")


class Lifecycle(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class SendState(enum.Enum):
    IDLE = "idle"
    OPEN = "open"
    BLOCKED_STREAM = "blocked_stream"
    BLOCKED_CONNECTION = "blocked_connection"
    ENDED = "ended"


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 10000
    max_streams_per_connection: int = 1024
    max_header_list_size: int = 16384
    max_request_message_size: int = 64 * 1024
    # undecoded request bytes one connection may hold (at least one largest request)
    connection_window: int = 256 * 1024
    max_buffered_request_bytes: int = 32 * 1024 * 1024  # ... and the whole process
    new_streams_per_second: float = 200.0
    resets_per_second: float = 50.0
    errors_per_second: float = 5.0
    process_errors_per_second: float = 100.0  # error responses of all connections together
    tiny_windows_per_second: float = 50.0  # updates leaving a waiting sender short (< 1 KiB)
    burst_seconds: float = 2.0
    # connections whose input is handled at once until one of their requests is served
    probation_concurrency: int = 4  # each budget allows this many seconds' worth at once
    preface_timeout: float = 10.0
    handshake_timeout: float = 10.0
    keepalive_interval: float = 60.0
    keepalive_timeout: float = 20.0
    stall_timeout: float = 30.0
    write_timeout: float = 30.0
    shutdown_timeout: float = 2.0


class Rate:
    """A token bucket: ``spend`` is False once more than ``burst`` were spent faster than
    ``per_second``."""

    def __init__(self, per_second: float, burst: float, now: float | None = None) -> None:
        self.per_second = per_second
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.at = now

    def spend(self, now: float) -> bool:
        elapsed = 0.0 if self.at is None else now - self.at
        self.tokens = min(self.burst, self.tokens + elapsed * self.per_second)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RequestPool:
    """Process-wide count of undecoded request bytes held by all connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class SmallDeque(list[T]):
    """A list with the two deque methods h2 and hpack call on their small per-connection
    stacks. A ``collections.deque`` costs 760 bytes even empty (a list 56 + 8 per item), and a
    connection keeps about sixteen (settings values, HPACK dynamic tables): a quarter of a
    subscriber's memory (bench/README.md, Memory). They hold a few items each, so the list's
    O(n) ends cost nothing."""

    def appendleft(self, item: T) -> None:
        self.insert(0, item)

    def popleft(self) -> T:
        return self.pop(0)


class CompactSettings(h2.settings.Settings):
    """h2's ``Settings``, each setting's values (the current one first, then those awaiting
    acknowledgement) in a ``SmallDeque``: h2 appends, reads ``[0]`` and ``len``, ``popleft``s."""

    def __init__(
        self, client: bool = True, initial_values: dict[h2.settings.SettingCodes, int] | None = None
    ) -> None:
        super().__init__(client, initial_values)
        for key in self._settings:
            self._compact(key)

    def __setitem__(self, key: h2.settings.SettingCodes | int, value: int) -> None:
        super().__setitem__(key, value)
        self._compact(key)

    def _compact(self, key: h2.settings.SettingCodes | int) -> None:
        values = self._settings[key]
        if not isinstance(values, SmallDeque):
            self._settings[key] = SmallDeque(values)  # type: ignore[assignment]


@dataclass
class Counters:
    """What a server's connections did, for tests and benchmarks (cheap ints, no labels)."""

    data_frames: int = 0
    data_bytes: int = 0
    window_updates: int = 0
    goaways: int = 0
    connections_closed: int = 0  # (the GC policy's cue for a full collection)


@dataclass(eq=False)
class StreamCore:
    """One request stream's protocol state."""

    stream_id: int
    path: str
    headers: list[tuple[str, str]]
    decoder: MessageDecoder
    send: SendState = SendState.IDLE
    request: bytes | None = None
    buffered: int = 0  # undecoded request bytes held, not yet acknowledged
    want: int = 0  # a blocked sender's useful window
    progress_at: float = 0.0  # since when its sender waits (last send, or start of a send)


@dataclass
class Outcome:
    """What the I/O layer must do after feeding the core."""

    start: list[StreamCore] = field(default_factory=list)  # run the handler
    cancel: list[StreamCore] = field(default_factory=list)  # cancel the handler
    wake: list[StreamCore] = field(default_factory=list)  # wake the blocked sender


Dispatch = Callable[["ConnectionCore", h2.events.Event, float, Outcome], None]


class ConnectionCore:
    def __init__(
        self,
        limits: ServerLimits,
        pool: RequestPool,
        paths: Container[str],
        now: float,
        counters: Counters | None = None,
        process_errors: Rate | None = None,
        keepalive_phase: float = 0.0,
    ) -> None:
        self.limits = limits
        # Seconds added to this connection's idle time before its PING (the I/O layer draws it
        # at random, up to a quarter of the interval): connections opened together (a fleet of
        # sensors starting or reconnecting) would otherwise wake together, and the timer
        # objects of thousands of them, all young at once, made one long GC pause
        # (bench/README.md, "Figures behind code comments").
        self.keepalive_phase = keepalive_phase
        self.pool = pool
        self.paths = paths
        self.counters = counters or Counters()
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        codes = h2.settings.SettingCodes
        self.h2.remote_settings = CompactSettings(client=True)  # before any frame is received
        self.h2.local_settings = CompactSettings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: limits.max_streams_per_connection,
                codes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                codes.INITIAL_WINDOW_SIZE: limits.max_request_message_size + GRPC_PREFIX,
            },
        )
        # Settings given as initial values are never "acknowledged" changes, so h2 would not
        # hand this one to its HPACK decoder (which enforces 64 KiB): the advertised limit is
        # the enforced one only with this line.
        self.h2.decoder.max_header_list_size = limits.max_header_list_size
        # HPACK's dynamic tables hold a few entries each: SmallDeque, as settings values.
        for table in (self.h2.encoder.header_table, self.h2.decoder.header_table):
            table.dynamic_entries = SmallDeque(table.dynamic_entries)  # type: ignore[assignment]
        self.lifecycle = Lifecycle.HANDSHAKE
        self.close_reason: str | None = None
        self.streams: dict[int, StreamCore] = {}
        self._window_high: dict[int, int] = {}  # largest window seen, by stream id (0: conn)
        self.started_at = now
        self.last_activity = now
        self.sent_at = now  # last time any stream of this connection sent DATA
        self.ping_sent_at: float | None = None
        burst = limits.burst_seconds
        self.new_streams = Rate(
            limits.new_streams_per_second, limits.new_streams_per_second * burst, now
        )
        self.resets = Rate(limits.resets_per_second, limits.resets_per_second * burst, now)
        self.errors = Rate(limits.errors_per_second, limits.errors_per_second * burst, now)
        per_second = limits.process_errors_per_second
        self.process_errors = process_errors or Rate(per_second, per_second * burst, now)
        tiny = limits.tiny_windows_per_second
        self.tiny_windows = Rate(tiny, tiny * burst, now)

    @property
    def closed(self) -> bool:
        return self.lifecycle is Lifecycle.CLOSED

    # --- bytes in, bytes out ---------------------------------------------------------------
    def initiate(self) -> None:
        """Queue our preface (SETTINGS) and open the connection receive window; nothing if the
        connection was shut down first (its task waited for its turn to start meanwhile)."""
        if self.lifecycle is not Lifecycle.HANDSHAKE:
            return
        self.h2.initiate_connection()
        window = max(self.limits.connection_window, self.limits.max_request_message_size + 5)
        extra = window - self.h2.inbound_flow_control_window
        if extra > 0:
            self.h2.increment_flow_control_window(extra)

    def data_to_send(self) -> bytes:
        return self.h2.data_to_send()

    def receive(self, data: bytes, now: float) -> Outcome:
        """Feed bytes read from the peer."""
        out = Outcome()
        if self.lifecycle in (Lifecycle.DRAINING, Lifecycle.CLOSED):
            return out  # after our GOAWAY, h2 refuses all input: nothing more is read
        self.last_activity = now
        # h2 parses all it is given before we see an event: slices bound what a flood makes it
        # parse past the point where this connection is cut off.
        for offset in range(0, len(data), RECEIVE_SLICE):
            try:
                events = self.h2.receive_data(data[offset : offset + RECEIVE_SLICE])
            except h2.exceptions.ProtocolError as exc:
                self._protocol_error(exc, out)
                return out
            for event in events:
                _HANDLERS.get(type(event), _ignore)(self, event, now, out)
                if self.closed:
                    return out
        return out

    def eof(self) -> Outcome:
        """The peer closed the connection (or the transport broke)."""
        out = Outcome()
        self._close("eof", out)
        return out

    # --- timers ------------------------------------------------------------------------------
    def read_deadline(self) -> float:
        """Until when a read may wait before ``tick`` is due: the preface deadline during the
        handshake; then the keepalive PING's (``keepalive_interval`` idle, plus this
        connection's phase), or its answer's. Only reading and ``tick`` move it."""
        limits = self.limits
        if self.lifecycle is Lifecycle.HANDSHAKE:
            return self.started_at + limits.preface_timeout
        if self.lifecycle is Lifecycle.OPEN:
            if self.ping_sent_at is not None:
                return self.ping_sent_at + limits.keepalive_timeout
            return self.last_activity + limits.keepalive_interval + self.keepalive_phase
        return math.inf

    def tick(self, now: float) -> Outcome:
        """Timers at ``read_deadline``: preface deadline, keepalive PING and its timeout."""
        out = Outcome()
        if now < self.read_deadline():
            return out
        if self.lifecycle is Lifecycle.HANDSHAKE:
            self._close("preface_timeout", out)
        elif self.lifecycle is Lifecycle.OPEN:
            if self.ping_sent_at is not None:
                self._goaway(h2.errors.ErrorCodes.NO_ERROR)
                self._close("keepalive_timeout", out)
            else:
                self.ping_sent_at = now
                self.h2.ping(b"mcollect")
        return out

    def stall_deadline(self, st: StreamCore) -> float:
        """When a blocked sender counts as stalled: ``stall_timeout`` after its last progress,
        or, waiting for the connection window, after the last progress of any stream on it
        (sharing the window with siblings is not the peer stalling)."""
        since = st.progress_at
        if st.send is SendState.BLOCKED_CONNECTION:
            since = max(since, self.sent_at)
        return since + self.limits.stall_timeout

    # --- sending -----------------------------------------------------------------------------
    def begin_send(self, st: StreamCore, now: float) -> None:
        """A handler starts sending: response headers once, and the stall clock starts."""
        st.progress_at = now
        if st.send is SendState.IDLE and self.lifecycle is not Lifecycle.CLOSED:
            self.h2.send_headers(
                st.stream_id, [(":status", "200"), ("content-type", "application/grpc")]
            )
            st.send = SendState.OPEN

    def useful(self, pending: int) -> int:
        """The smallest window worth sending into: no slivers for a peer opening tiny windows,
        yet a peer that asked for small windows (its initial window) gets pieces of that size."""
        peer_initial = self.h2.remote_settings.initial_window_size
        return min(pending, USEFUL_BYTES, max(MIN_USEFUL_BYTES, peer_initial))

    def take_turn(self, st: StreamCore, data: memoryview, now: float) -> int:
        """Queue up to ``TURN_BYTES`` of ``data`` (``MAX_TURN_BYTES`` when that leaves no
        sliver) on the stream; 0 when it must wait (its
        ``send`` says for which window) or has ended."""
        if self.lifecycle is not Lifecycle.OPEN or st.send is SendState.ENDED:
            st.send = SendState.ENDED
            return 0
        stream = self.h2.streams.get(st.stream_id)
        if stream is None or stream.closed:
            st.send = SendState.ENDED
            return 0
        want = self.useful(len(data))
        stream_window = stream.outbound_flow_control_window
        conn_window = self.h2.outbound_flow_control_window
        if stream_window < want:
            st.send, st.want = SendState.BLOCKED_STREAM, want
            return 0
        if conn_window < want:
            st.send, st.want = SendState.BLOCKED_CONNECTION, want
            return 0
        n = min(len(data), stream_window, conn_window)
        if n > MAX_TURN_BYTES:
            n = TURN_BYTES
        frame = self.h2.max_outbound_frame_size
        for offset in range(0, n, frame):
            self.h2.send_data(st.stream_id, bytes(data[offset : min(n, offset + frame)]))
            self.counters.data_frames += 1
        self.counters.data_bytes += n
        st.send = SendState.OPEN
        st.progress_at = self.sent_at = now
        return n

    def end_stream(
        self, st: StreamCore, status: Status, message: str, now: float, *, refusal: bool = False
    ) -> Outcome:
        """Queue the stream's final status (trailers, or a trailers-only response). Error
        statuses cost the connection's budget; refusals before any handler (what a flood of
        invalid requests gets) the process's too."""
        out = Outcome()
        if st.send is SendState.ENDED or self.lifecycle is Lifecycle.CLOSED:
            self._forget(st)
            return out
        metrics.GRPC_STREAMS_ENDED.labels(status.name).inc()
        trailers = status_trailers(status, message)
        if st.send is SendState.IDLE:
            trailers = [(":status", "200"), ("content-type", "application/grpc"), *trailers]
        st.send = SendState.ENDED
        with contextlib.suppress(h2.exceptions.ProtocolError):  # reset meanwhile
            self.h2.send_headers(st.stream_id, trailers, end_stream=True)
        self._forget(st)
        if refusal:
            self._error_response(now, out)
        elif status not in (Status.OK, Status.UNAVAILABLE, Status.CANCELLED):
            self._spend(self.errors, "error_rate", now, out)
        return out

    def shutdown(self) -> Outcome:
        """Graceful end: every open stream gets UNAVAILABLE, then GOAWAY; the connection drains."""
        out = Outcome()
        if self.lifecycle is Lifecycle.CLOSED:
            return out
        for st in list(self.streams.values()):
            self.end_stream(st, Status.UNAVAILABLE, "server shutting down", self.last_activity)
            out.cancel.append(st)
        self.lifecycle = Lifecycle.DRAINING
        self._goaway(h2.errors.ErrorCodes.NO_ERROR)
        return out

    def close(self, reason: str) -> Outcome:
        """The I/O layer gives up on the connection (write timeout, broken transport)."""
        out = Outcome()
        self._close(reason, out)
        return out

    # --- receiving -----------------------------------------------------------------------------
    def _on_settings(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        assert isinstance(event, h2.events.RemoteSettingsChanged)
        if self.lifecycle is Lifecycle.HANDSHAKE:
            self.lifecycle = Lifecycle.OPEN
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._wake_blocked(out, connection=True, stream_id=None)

    def _on_window(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        assert isinstance(event, h2.events.WindowUpdated)
        self.counters.window_updates += 1
        stream_id = event.stream_id or None
        woken, waiting = self._wake_blocked(out, connection=stream_id is None, stream_id=stream_id)
        # A tiny update costs a frame parse and opens nothing worth sending into: a flood of
        # them is the 1-byte-window attack. Counted when it leaves a waiting sender short, or
        # grows a small window past its high-water mark (more than handing back what was
        # read). grpcio's 5-byte updates to fresh 4 MiB windows, or small updates handing back
        # a small message's bytes, are not.
        key = event.stream_id
        window = self._window(stream_id)
        grown = window > self._window_high.get(key, self._initial_window(stream_id))
        if grown:
            self._window_high[key] = window
        tiny = (event.delta or 0) < MIN_USEFUL_BYTES and not woken
        if tiny and (waiting or (grown and window < USEFUL_BYTES)):
            self._spend(self.tiny_windows, "tiny_window_rate", now, out)

    def _window(self, stream_id: int | None) -> int:
        if stream_id is None:
            return self.h2.outbound_flow_control_window
        stream = self.h2.streams.get(stream_id)
        return 0 if stream is None else stream.outbound_flow_control_window

    def _initial_window(self, stream_id: int | None) -> int:
        if stream_id is None:
            return 65535  # RFC 9113: the connection window starts there, SETTINGS or not
        return self.h2.remote_settings.initial_window_size

    def _wake_blocked(
        self, out: Outcome, *, connection: bool, stream_id: int | None
    ) -> tuple[int, int]:
        """Wake the senders whose wait the window change may have ended (only when it is now
        useful to them: tiny updates wake nobody); how many were woken, and left waiting."""
        if stream_id is not None:
            st = self.streams.get(stream_id)
            candidates = [st] if st is not None else []
        else:
            candidates = list(self.streams.values())
        woken = waiting = 0
        for st in candidates:
            blocked = st.send is SendState.BLOCKED_STREAM or (
                connection and st.send is SendState.BLOCKED_CONNECTION
            )
            if not blocked:
                continue
            if self.h2.local_flow_control_window(st.stream_id) >= st.want:
                st.send = SendState.OPEN
                out.wake.append(st)
                woken += 1
            else:
                waiting += 1
        return woken, waiting

    def _on_request(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        assert isinstance(event, h2.events.RequestReceived)
        if not self._spend(self.new_streams, "stream_rate", now, out):
            return
        sid = event.stream_id
        headers = [(str(k), str(v)) for k, v in event.headers or ()]
        h = dict(headers)
        if self.lifecycle is not Lifecycle.OPEN:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if h.get(":method") != "POST":
            self.h2.send_headers(sid, [(":status", "405")], end_stream=True)
            self._error_response(now, out)
            return
        content_type = h.get("content-type", "")
        if not content_type.startswith("application/grpc"):
            message = f"invalid gRPC content-type {content_type!r}"
            self.h2.send_headers(
                sid,
                [
                    (":status", "415"),
                    ("content-type", "text/plain"),
                    *status_trailers(Status.INTERNAL, message),
                ],
                end_stream=True,
            )
            self._error_response(now, out)
            return
        path = h.get(":path", "")
        st = StreamCore(
            sid,
            path,
            headers,
            MessageDecoder(self.limits.max_request_message_size),
            progress_at=now,
        )
        self.streams[sid] = st
        if path not in self.paths:
            message = f"unknown method {path}"
            self._merge(out, self.end_stream(st, Status.UNIMPLEMENTED, message, now, refusal=True))

    def _on_data(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        assert isinstance(event, h2.events.DataReceived)
        sid, data = event.stream_id, event.data or b""
        size = event.flow_controlled_length or 0
        st = self.streams.get(sid)
        if st is None or st.request is not None or st.send is SendState.ENDED:
            self._ack(size, sid)  # nothing of it is kept
            return
        if size > len(data):
            self._ack(size - len(data), sid)  # padding
        if not self.pool.take(len(data)):
            metrics.LIMIT_HITS.labels("request_bytes").inc()
            log.warning("request refused: request buffers full", extra={"used": self.pool.used})
            self._ack(len(data), sid)
            self._refuse(st, Status.RESOURCE_EXHAUSTED, "server request buffers full", now, out)
            return
        st.buffered += len(data)
        try:
            messages = st.decoder.feed(data)
            if len(messages) > 1:
                raise GrpcError(Status.INVALID_ARGUMENT, "expected one request message")
        except GrpcError as exc:
            if exc.status is Status.RESOURCE_EXHAUSTED:
                metrics.LIMIT_HITS.labels("request_message").inc()
            self._refuse(st, exc.status, exc.message, now, out)
            return
        if messages:  # consumed: hand its bytes back to the peer
            st.request = messages[0]
            consumed = st.buffered - st.decoder.buffered
            self._release(st, consumed)

    def _on_end(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        assert isinstance(event, h2.events.StreamEnded)
        st = self.streams.get(event.stream_id)
        if st is None or st.send is SendState.ENDED:
            return
        try:
            st.decoder.end()
            if st.request is None:
                raise GrpcError(Status.INVALID_ARGUMENT, "expected one request message")
        except GrpcError as exc:
            self._refuse(st, exc.status, exc.message, now, out)
            return
        out.start.append(st)

    def _on_reset(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        assert isinstance(event, h2.events.StreamReset)
        st = self.streams.get(event.stream_id)
        answered = st is not None and st.send is not SendState.IDLE
        if st is not None:
            if st.send is not SendState.ENDED:
                metrics.GRPC_STREAMS_ENDED.labels("CANCELLED").inc()
            st.send = SendState.ENDED
            self._forget(st)
            out.cancel.append(st)
        # Rapid reset (CVE-2023-44487) is resetting streams before they are answered: the
        # server did work for nothing. Cancelling a Watch that is flowing costs no budget.
        if event.remote_reset and not answered:
            self._spend(self.resets, "reset_rate", now, out)

    def _on_ping_ack(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        self.ping_sent_at = None

    def _on_goaway(self, event: h2.events.Event, now: float, out: Outcome) -> None:
        self._close("peer_goaway", out)

    # --- helpers -----------------------------------------------------------------------------
    def _refuse(
        self, st: StreamCore, status: Status, message: str, now: float, out: Outcome
    ) -> None:
        self._merge(out, self.end_stream(st, status, message, now, refusal=True))
        out.cancel.append(st)

    def _release(self, st: StreamCore, n: int) -> None:
        """``n`` request bytes of ``st`` are consumed or dropped: acknowledge and uncount them."""
        st.buffered -= n
        self.pool.give(n)
        self._ack(n, st.stream_id)

    def _ack(self, n: int, stream_id: int) -> None:
        if n > 0 and self.lifecycle is not Lifecycle.CLOSED:
            self.h2.acknowledge_received_data(n, stream_id)

    def _forget(self, st: StreamCore) -> None:
        if st.buffered:
            self._release(st, st.buffered)
        self.streams.pop(st.stream_id, None)
        self._window_high.pop(st.stream_id, None)

    def _error_response(self, now: float, out: Outcome) -> None:
        """An error response costs this connection's budget and the process's: a flood from
        many connections at once is cut off after the first few of each."""
        if self._spend(self.errors, "error_rate", now, out):
            self._spend(self.process_errors, "process_error_rate", now, out)

    def _spend(self, rate: Rate, limit: str, now: float, out: Outcome) -> bool:
        """Spend one of a per-connection budget; when it is gone, GOAWAY ENHANCE_YOUR_CALM."""
        if rate.spend(now):
            return True
        if self.lifecycle is not Lifecycle.CLOSED:
            metrics.LIMIT_HITS.labels(limit).inc()
            log.warning("connection over its budget: GOAWAY", extra={"limit": limit})
            self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._close(limit, out)
        return False

    def _protocol_error(self, exc: h2.exceptions.ProtocolError, out: Outcome) -> None:
        reason = type(exc).__name__
        if isinstance(exc, h2.exceptions.FlowControlError):
            metrics.LIMIT_HITS.labels("connection_request_bytes").inc()
        elif isinstance(exc, h2.exceptions.DenialOfServiceError):
            metrics.LIMIT_HITS.labels("header_list").inc()
        log.info("closing connection after protocol error", extra={"error": str(exc)[:200]})
        code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._goaway(code)
        self._close(reason, out)

    def _goaway(self, code: h2.errors.ErrorCodes) -> None:
        try:
            self.h2.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            return
        self.counters.goaways += 1

    def _close(self, reason: str, out: Outcome) -> None:
        """The one way a connection ends: every stream's sender and handler are let go."""
        if self.lifecycle is Lifecycle.CLOSED:
            return
        if reason not in ("eof", "peer_goaway", "shutdown"):
            metrics.PROTOCOL_ERRORS.labels(reason).inc()
        self.lifecycle = Lifecycle.CLOSED
        self.close_reason = reason
        for st in list(self.streams.values()):
            st.send = SendState.ENDED
            self._forget(st)
            out.cancel.append(st)
            out.wake.append(st)

    @staticmethod
    def _merge(into: Outcome, other: Outcome) -> None:
        into.start += other.start
        into.cancel += other.cancel
        into.wake += other.wake


def _ignore(core: ConnectionCore, event: h2.events.Event, now: float, out: Outcome) -> None:
    """PINGs and SETTINGS acks are answered by h2 itself; priorities are not used."""


_HANDLERS: dict[type[h2.events.Event], Dispatch] = {
    h2.events.RemoteSettingsChanged: ConnectionCore._on_settings,
    h2.events.WindowUpdated: ConnectionCore._on_window,
    h2.events.RequestReceived: ConnectionCore._on_request,
    h2.events.DataReceived: ConnectionCore._on_data,
    h2.events.StreamEnded: ConnectionCore._on_end,
    h2.events.StreamReset: ConnectionCore._on_reset,
    h2.events.PingAckReceived: ConnectionCore._on_ping_ack,
    h2.events.ConnectionTerminated: ConnectionCore._on_goaway,
}
