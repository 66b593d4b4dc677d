"""The h2 gRPC server against grpcio (independent client) and raw sockets."""

from __future__ import annotations

import socket

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trustme

from metacollector.grpc.framing import encode_message
from metacollector.grpc.server import ServerLimits, StartupError, server_ssl_context
from metacollector.proto import metadata_pb2 as pb
from tests.support.grpc_server import Served, start_server
from tests.support.grpc_watch import GrpcWatch


def call(
    target: str,
    method: str,
    node: str,
    creds: grpc.ChannelCredentials | None = None,
) -> GrpcWatch:
    return GrpcWatch(target, node, credentials=creds, method=method).start()


async def test_streams_messages_in_order(served: Served) -> None:
    w = call(served.target, "/metadata.Metadata/Watch", "500")
    await w.wait_for(lambda w: len(w.events) == 500)
    assert [e.uid for e in w.events] == [f"u{i}" for i in range(500)]
    w.close()


async def test_large_messages_beyond_initial_window(served: Served) -> None:
    # 200 x 10 KB = 2 MB, far past the 64 KiB default window: needs WINDOW_UPDATEs.
    w = call(served.target, "/metadata.Metadata/Watch", "200:10000")
    await w.wait_for(lambda w: len(w.events) == 200)
    assert all(len(e.meta) == 10000 for e in w.events)
    w.close()


async def test_error_status_and_message(served: Served) -> None:
    w = call(served.target, "/test.Test/Fail", "x")
    assert await w.wait_ended() == grpc.StatusCode.INVALID_ARGUMENT
    assert w.error is not None and w.error.details() == "bad selector: ünïcode % 100"  # type: ignore[attr-defined]
    w = call(served.target, "/test.Test/Crash", "x")
    assert await w.wait_ended() == grpc.StatusCode.INTERNAL
    w = call(served.target, "/nope.Nope/Nope", "x")
    assert await w.wait_ended() == grpc.StatusCode.UNIMPLEMENTED
    healthy = call(served.target, "/metadata.Metadata/Watch", "3")
    await healthy.wait_for(lambda w: len(w.events) == 3)
    healthy.close()


async def test_hundred_streams_on_one_connection_then_shutdown(nursery: trio.Nursery) -> None:
    s = await start_server(nursery)
    channel = grpc.insecure_channel(s.target)
    watches = [GrpcWatch(s.target, "5").start(channel) for _ in range(100)]
    for w in watches:
        await w.wait_for(lambda w: len(w.events) == 5)
    assert len(s.server.connections) == 1
    s.cancel()
    for w in watches:
        assert await w.wait_ended() == grpc.StatusCode.UNAVAILABLE
    channel.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(ca: trustme.CA, tmp_path, name: str = "localhost"):  # type: ignore[no-untyped-def]
    cert = ca.issue_cert(name, "127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    return str(cert_path), str(key_path), str(ca_path)


async def test_tls_with_alpn_h2(nursery: trio.Nursery, ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cert, key, ca_path = tls_files(ca, tmp_path)
    s = await start_server(nursery, ssl_context=server_ssl_context(cert, key, None))
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca_path, "rb").read())
    w = call(f"localhost:{s.port}", "/metadata.Metadata/Watch", "10", creds)
    await w.wait_for(lambda w: len(w.events) == 10)
    w.close()
    s.cancel()


async def test_mtls_requires_client_certificate(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    cert, key, ca_path = tls_files(ca, tmp_path)
    s = await start_server(nursery, ssl_context=server_ssl_context(cert, key, ca_path))
    root = open(ca_path, "rb").read()
    anonymous = call(
        f"localhost:{s.port}",
        "/metadata.Metadata/Watch",
        "10",
        grpc.ssl_channel_credentials(root_certificates=root),
    )
    assert await anonymous.wait_ended() == grpc.StatusCode.UNAVAILABLE
    client = ca.issue_cert("node-1")
    creds = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.private_key_pem.bytes(),
        certificate_chain=client.cert_chain_pems[0].bytes(),
    )
    w = call(f"localhost:{s.port}", "/metadata.Metadata/Watch", "10", creds)
    await w.wait_for(lambda w: len(w.events) == 10)
    w.close()
    s.cancel()


def test_bad_certificate_files_are_startup_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        StartupError, match="--broker-server-cert: file not found or not readable: /nonexistent.pem"
    ):
        server_ssl_context("/nonexistent.pem", "/nonexistent.pem", None)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(StartupError, match="cannot load TLS certificate"):
        server_ssl_context(str(bad), str(bad), None)


async def test_busy_port_is_a_startup_error(nursery: trio.Nursery) -> None:
    from metacollector.grpc.server import GrpcServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError, match=f"127.0.0.1:{port}"):
            await GrpcServer({}).serve("127.0.0.1", port)


# --- raw-socket abuse; a healthy grpcio stream must stay exact throughout -------------------


async def raw(served: Served, payload: bytes, read: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", served.port)
    async with stream:
        out = b""
        try:  # an abuser may be cut off (GOAWAY, then close) while it is still sending
            await stream.send_all(payload)
            if read:
                with trio.move_on_after(2):
                    while chunk := await stream.receive_some(65536):
                        out += chunk
        except trio.BrokenResourceError:
            pass
        return out


def h2_client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    return c


def request(
    c: h2.connection.H2Connection,
    sid: int,
    path: str = "/metadata.Metadata/Watch",
    content_type: str = "application/grpc",
) -> None:
    c.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", content_type),
            ("te", "trailers"),
        ],
    )


def responses(c: h2.connection.H2Connection, data: bytes) -> list[h2.events.Event]:
    try:
        return list(c.receive_data(data))
    except Exception:  # the peer's GOAWAY etc. after what we need
        return []


async def test_abuse_keeps_healthy_stream_exact(served: Served) -> None:
    healthy = call(served.target, "/metadata.Metadata/Watch", "100")
    await healthy.wait_for(lambda w: len(w.events) == 100)
    # garbage instead of the preface, and an HTTP/1.1 request: connection closed, no crash
    await raw(served, b"\x00\xff" * 100)
    assert b"HTTP/1.1 200" not in await raw(served, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # wrong content-type -> 415
    c = h2_client()
    request(c, 1, content_type="application/json")
    c.send_data(1, b"{}", end_stream=True)
    headers = [
        e
        for e in responses(c, await raw(served, c.data_to_send()))
        if isinstance(e, h2.events.ResponseReceived)
    ]
    assert headers and dict(headers[0].headers)[b":status"] == b"415"
    # truncated message, oversize message, invalid protobuf
    for body, code in [
        (encode_message(b"x" * 10)[:8], b"13"),
        (b"\x00\xff\xff\xff\xff", b"8"),
        (encode_message(b"\xff\xff\xff"), b"3"),
    ]:
        c = h2_client()
        request(c, 1)
        c.send_data(1, body, end_stream=True)
        events = responses(c, await raw(served, c.data_to_send()))
        statuses = [
            dict(e.headers).get(b"grpc-status")
            for e in events
            if isinstance(e, h2.events.ResponseReceived | h2.events.TrailersReceived)
        ]
        if code == b"3":  # our dummy Watch treats the payload as a Selector: parse error
            assert statuses and statuses[-1] in (b"3", b"13"), statuses
        else:
            assert code in statuses, (body, statuses)
    # a thousand streams opened and reset at once
    c = h2_client()
    for i in range(1000):
        sid = 2 * i + 1
        request(c, sid)
        c.send_data(
            sid, encode_message(pb.Selector(nodeName="10").SerializeToString()), end_stream=True
        )
        c.reset_stream(sid)
    await raw(served, c.data_to_send())
    # slowloris: a partial preface, then silence -> closed after the preface timeout
    start = trio.current_time()
    await raw(served, b"PRI * HTTP/2.0\r\n")
    assert trio.current_time() - start < 5
    # a new stream (the control) is served after all that, and the healthy one was untouched
    after = call(served.target, "/metadata.Metadata/Watch", "7")
    await after.wait_for(lambda w: len(w.events) == 7)
    assert healthy.error is None and len(healthy.events) == 100
    assert [e.uid for e in healthy.events] == [f"u{i}" for i in range(100)]
    healthy.close(), after.close()


async def test_stalled_reader_ended_unavailable_others_flow(nursery: trio.Nursery) -> None:
    s = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", s.port)
    c = h2_client()
    request(c, 1)
    # 2 MB for a reader that never grants window beyond the initial 64 KiB
    c.send_data(
        1, encode_message(pb.Selector(nodeName="200:10000").SerializeToString()), end_stream=True
    )
    await stream.send_all(c.data_to_send())
    fast = call(s.target, "/metadata.Metadata/Watch", "300")
    await fast.wait_for(lambda w: len(w.events) == 300)
    trailers: list[h2.events.Event] = []
    with trio.fail_after(5):
        while not trailers:
            data = await stream.receive_some(65536)  # read, but never acknowledge
            assert data
            trailers = [
                e for e in c.receive_data(data) if isinstance(e, h2.events.TrailersReceived)
            ]
    assert dict(trailers[0].headers)[b"grpc-status"] == b"14"
    await stream.aclose()
    fast.close()
    s.cancel()


# --- keepalive ---------------------------------------------------------------------------------

KEEPALIVE = ServerLimits(keepalive_interval=0.4, keepalive_timeout=0.3, preface_timeout=1.0)


async def idle_client(port: int, answer_pings: bool, seconds: float) -> tuple[int, bool]:
    """Connect, then send nothing but (maybe) PING acks for ``seconds``: how many PINGs came,
    and whether the server closed the connection."""
    c = h2_client()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(c.data_to_send())
        pings, closed = 0, False
        with trio.move_on_after(seconds):
            while data := await stream.receive_some(65536):
                events = responses(c, data)
                pings += sum(isinstance(e, h2.events.PingReceived) for e in events)
                ack = c.data_to_send()  # h2 answers PINGs (and SETTINGS) by itself
                if answer_pings or not any(isinstance(e, h2.events.PingReceived) for e in events):
                    await stream.send_all(ack)
            closed = True
    return pings, closed


async def test_keepalive_pings_idle_connections_and_closes_silent_ones(
    nursery: trio.Nursery,
) -> None:
    served = await start_server(nursery, limits=KEEPALIVE)
    async with trio.open_nursery() as clients:
        results: dict[str, tuple[int, bool]] = {}

        async def run(name: str, answer: bool) -> None:
            results[name] = await idle_client(served.port, answer, 3.0)

        clients.start_soon(run, "answers", True)
        clients.start_soon(run, "silent", False)
    pings, closed = results["answers"]
    assert pings >= 2 and not closed  # pinged while idle, kept while it answers
    pings, closed = results["silent"]
    assert pings == 1 and closed  # one PING unanswered for keepalive_timeout: closed
