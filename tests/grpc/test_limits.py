"""Limits and timers of one connection, over in-memory streams (timers on trio's MockClock):
request bytes bounded where they arrive, budgets answered with GOAWAY ENHANCE_YOUR_CALM, the
advertised header-list limit enforced, no DATA slivers, stall/keepalive/preface/handshake
deadlines. Each limit asserts its ``metacollector_limit_hits`` (or protocol error) count."""

from __future__ import annotations

import h2.errors
import trio
import trio.testing
import trustme

from metacollector import metrics
from metacollector.grpc.framing import MessageDecoder, encode_message
from metacollector.grpc.protocol import ConnectionCore, RequestPool
from metacollector.grpc.server import GrpcServer, ServerLimits, server_ssl_context
from tests.support.h2_peer import HANDLERS, WATCH, Peer, connect

CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def hits(limit: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("metacollector_limit_hits_total", {"limit": limit}) or 0
    )


def protocol_errors(reason: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "metacollector_grpc_protocol_errors_total", {"reason": reason}
        )
        or 0
    )


def headers(method: str = "POST", extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "http"),
        (":path", WATCH),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        *extra,
    ]


def open_stream(peer: Peer, body: bytes, *, end: bool = True, method: str = "POST") -> int:
    sid = peer.h2.get_next_available_stream_id()
    peer.h2.send_headers(sid, headers(method), end_stream=not body and end)
    if body:
        peer.h2.send_data(sid, body, end_stream=end)
    peer.decoders[sid] = MessageDecoder(1 << 30)
    return sid


def send_within_window(peer: Peer, sid: int, body: bytes) -> int:
    """Send as much of ``body`` as the server's windows allow; returns how much."""
    room = min(peer.h2.local_flow_control_window(sid), len(body))
    for offset in range(0, room, 16384):
        peer.h2.send_data(sid, body[offset : min(room, offset + 16384)])
    return room


# --- request bytes -----------------------------------------------------------------------------


async def test_header_list_limit_advertised_is_enforced(nursery: trio.Nursery) -> None:
    peer = await connect(nursery)
    ok = peer.h2.get_next_available_stream_id()
    peer.h2.send_headers(ok, headers(extra=(("x-pad", "a" * 15000),)))
    peer.h2.send_data(ok, encode_message(b""), end_stream=True)
    peer.send()
    await peer.pump()
    assert peer.goaway is None  # 15 KB: under the advertised 16 KiB
    before = hits("header_list")
    big = peer.h2.get_next_available_stream_id()
    peer.h2.send_headers(big, headers(extra=(("x-pad", "a" * 20000),)))
    peer.send()
    await peer.pump()
    assert peer.goaway is not None and peer.goaway.error_code == CALM
    assert hits("header_list") == before + 1


async def test_oversized_request_message_refused(nursery: trio.Nursery) -> None:
    peer = await connect(nursery)
    before = hits("request_message")
    sid = open_stream(peer, b"\x00" + (70000).to_bytes(4, "big") + b"x" * 100, end=False)
    peer.send()
    await peer.pump()
    assert peer.trailers[sid][b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED
    assert hits("request_message") == before + 1


async def test_half_sent_requests_hold_at_most_the_connection_window(
    nursery: trio.Nursery,
) -> None:
    limits = ServerLimits()
    peer = await connect(nursery, limits=limits)
    pool = peer.server.request_pool
    sids = []
    for _ in range(20):  # 20 x (a 60 KB message, all but its last bytes)
        sid = open_stream(peer, b"", end=False)
        sids.append(sid)
        body = encode_message(b"y" * 60000)[:-10]
        send_within_window(peer, sid, body)
    peer.send()
    await peer.pump()
    # nothing acknowledged: the client ran out of connection window at the server's bound
    assert peer.h2.outbound_flow_control_window == 0
    assert pool.used == limits.connection_window
    for sid in sids:
        peer.h2.reset_stream(sid)
    peer.send()
    await peer.pump()
    assert pool.used == 0  # released with the streams
    assert peer.goaway is None


async def test_process_wide_request_bytes_bound(nursery: trio.Nursery) -> None:
    limits = ServerLimits(max_buffered_request_bytes=100_000)
    server = GrpcServer(HANDLERS, limits=limits)
    a, b = await connect(nursery, server), await connect(nursery, server)
    before = hits("request_bytes")
    partial = encode_message(b"y" * 60000)[:-10]
    sa, sb = open_stream(a, b"", end=False), open_stream(b, b"", end=False)
    send_within_window(a, sa, partial), send_within_window(b, sb, partial)
    a.send()
    await a.pump()
    b.send()
    await b.pump()
    assert sa not in a.trailers
    assert b.trailers[sb][b"grpc-status"] == b"8"
    assert hits("request_bytes") == before + 1
    assert server.request_pool.used == len(partial)


# --- budgets: GOAWAY ENHANCE_YOUR_CALM -------------------------------------------------------


async def test_rapid_reset_flood_gets_goaway(nursery: trio.Nursery) -> None:
    server = GrpcServer(HANDLERS, limits=ServerLimits())
    abuser, healthy = await connect(nursery, server), await connect(nursery, server)
    watched = healthy.request("h:5:100")
    before = hits("reset_rate")
    body = encode_message(b"\x0a\x05n:1:1")
    for _ in range(2000):
        sid = open_stream(abuser, body)
        abuser.h2.reset_stream(sid)
        if abuser.h2.open_outbound_streams == 0:
            abuser.send()
    abuser.send()
    await abuser.pump()
    assert abuser.goaway is not None and abuser.goaway.error_code == CALM
    assert hits("reset_rate") == before + 1
    await healthy.pump()
    assert len(healthy.messages[watched]) == 5 and healthy.goaway is None


async def test_error_response_flood_gets_goaway(nursery: trio.Nursery) -> None:
    peer = await connect(nursery)
    before = hits("error_rate")
    for _ in range(300):
        open_stream(peer, b"", method="GET")
    peer.send()
    await peer.pump()
    assert peer.goaway is not None and peer.goaway.error_code == CALM
    assert hits("error_rate") == before + 1


async def test_new_stream_budget(nursery: trio.Nursery) -> None:
    peer = await connect(nursery, limits=ServerLimits(new_streams_per_second=10, burst_seconds=2))
    before = hits("stream_rate")
    for _ in range(21):
        peer.request("n:1:1")
    await peer.pump()
    assert peer.goaway is not None and peer.goaway.error_code == CALM
    assert hits("stream_rate") == before + 1


# --- no slivers; stall, keepalive, preface and handshake deadlines (MockClock) ------------------


async def test_one_byte_windows_get_no_slivers_then_goaway(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = await connect(nursery, window=1, auto_ack=False)
    sid = peer.request("n:100:1000")
    await peer.pump()
    before = hits("tiny_window_rate")
    updates = 0
    while peer.goaway is None:
        # a 1-byte top-up every 10 ms, on the stream and the connection
        peer.h2.increment_flow_control_window(1, stream_id=sid)
        peer.h2.increment_flow_control_window(1)
        peer.send()
        updates += 1
        await trio.sleep(0.01)
        peer.read()
    frames = peer.server.counters.data_frames
    assert frames == peer.data_frames <= updates // 1024 + 1  # 1 KiB pieces, never slivers
    assert peer.goaway.error_code == CALM and hits("tiny_window_rate") == before + 1
    assert 2 * updates > 100  # two per top-up; the budget: 50/s, 2 seconds of it at once


async def test_a_stream_without_window_is_stalled(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = await connect(nursery, window=1, auto_ack=False, limits=ServerLimits(stall_timeout=30))
    sid = peer.request("n:100:1000")  # never opens anything
    await trio.sleep(29)
    peer.read()
    assert sid not in peer.trailers
    await trio.sleep(2)
    peer.read()
    assert peer.trailers[sid][b"grpc-status"] == b"14"  # UNAVAILABLE after stall_timeout
    assert peer.data_frames == 0


async def test_stall_deadline_counts_from_the_last_progress(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = await connect(nursery, auto_ack=False, limits=ServerLimits(stall_timeout=30))
    sid = peer.request("n:1000:1000")
    for _ in range(3):  # a slow but live reader: a 16 KiB window every 20 s
        await trio.sleep(20)
        peer.read()
        peer.ack()
        peer.send()
    await trio.sleep(10)
    peer.read()
    assert sid not in peer.trailers
    await trio.sleep(25)
    peer.read()
    assert peer.trailers[sid][b"grpc-status"] == b"14"


async def test_keepalive_pings_idle_and_closes_silent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    limits = ServerLimits(keepalive_interval=60, keepalive_timeout=20)
    server = GrpcServer(HANDLERS, limits=limits)
    answering = await connect(nursery, server)
    silent = await connect(nursery, server)
    silent.answer_pings = False
    await trio.sleep(59)
    answering.read(), silent.read()
    assert answering.pings == silent.pings == 0
    await trio.sleep(60 / 4 + 1)
    answering.read(), silent.read()
    assert answering.pings == 1 and silent.pings == 1
    before = protocol_errors("keepalive_timeout")
    await trio.sleep(20 + 60 / 4 + 1)
    answering.read(), silent.read()
    assert len(server.connections) == 1 and silent.goaway is not None
    assert protocol_errors("keepalive_timeout") == before + 1
    for _ in range(60):  # answering promptly keeps it open for good
        await trio.sleep(5)
        answering.read()
    assert answering.pings >= 4 and len(server.connections) == 1


async def test_preface_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = GrpcServer(HANDLERS, limits=ServerLimits(preface_timeout=10))
    to_server = trio.testing.MemoryReceiveStream()
    to_server.put_data(b"PRI * HTTP/2.0\r\n")  # half a preface, then nothing
    nursery.start_soon(
        server._connection, trio.StapledStream(trio.testing.MemorySendStream(), to_server), None
    )
    before = protocol_errors("preface_timeout")
    await trio.sleep(9.5)
    assert len(server.connections) == 1
    await trio.sleep(1)
    assert len(server.connections) == 0
    assert protocol_errors("preface_timeout") == before + 1


async def test_tls_handshake_timeout(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    ctx = server_ssl_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), None)
    server = GrpcServer(HANDLERS, ssl_context=ctx, limits=ServerLimits(handshake_timeout=10))
    before = protocol_errors("handshake_timeout")
    done = trio.Event()

    async def run() -> None:
        transport = trio.StapledStream(
            trio.testing.MemorySendStream(), trio.testing.MemoryReceiveStream()
        )
        await server._connection(transport, None)
        done.set()

    nursery.start_soon(run)
    await trio.sleep(9.5)
    assert not done.is_set()
    await trio.sleep(1)
    assert done.is_set() and protocol_errors("handshake_timeout") == before + 1


async def test_tiny_updates_count_only_on_small_or_waited_for_windows(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # grpcio's habit: a 5-byte update on each fresh stream of a 4 MiB window; nothing waits
    polite = await connect(nursery, window=4 << 20)
    for k in range(300):
        sid = polite.request(f"n{k}:0:1")  # a view with nothing to send
        polite.h2.increment_flow_control_window(5, stream_id=sid)
    polite.send()
    await polite.pump()
    assert polite.goaway is None
    # the same on a 1-byte window, again and again: the window creeps up, a byte at a time
    before = hits("tiny_window_rate")
    creeping = await connect(nursery, window=1)
    sid = creeping.request("n:0:1")
    while creeping.goaway is None:
        creeping.h2.increment_flow_control_window(1, stream_id=sid)
        creeping.send()
        await trio.sleep(0.01)
        creeping.read()
    assert creeping.goaway.error_code == CALM and hits("tiny_window_rate") == before + 1


def test_shutdown_before_the_preface_is_quiet() -> None:
    # A connection's task waits for its turn (probation) before sending its preface; shutdown
    # may close it meanwhile, and the preface must then not be queued (h2 refused: a traceback
    # at every busy shutdown).
    core = ConnectionCore(ServerLimits(), RequestPool(1 << 20), {"/x"}, now=0.0)
    core.shutdown()
    core.close("shutdown")
    core.initiate()
    assert core.closed
