"""Hypothesis-driven fuzzing of the gRPC/h2 input path and the watch decoder: random bytes,
mutated valid requests, huge headers, stream floods, oversize messages. The server never
crashes, its memory stays bounded, and a healthy subscriber's stream stays exact throughout."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator

import h2.config
import h2.connection
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metacollector.grpc.framing import encode_message
from metacollector.grpc.server import GrpcServer, ServerLimits
from metacollector.grpc.watch import WatchService
from metacollector.hub import Hub
from metacollector.kube.stream import LineTooLong, TruncatedLine, WatchDecoder, decode_event
from metacollector.proto import metadata_pb2 as pb
from tests.support import builders as b
from tests.support import oracle
from tests.support.grpc_watch import GrpcWatch


class Served:
    """A real Watch server over a small cluster, in its own thread and trio loop."""

    def __init__(self) -> None:
        self.hub = Hub()
        apply = self.hub.reducer.apply
        apply("ADDED", "Namespace", b.namespace("shop", "ns"))
        apply("ADDED", "Service", b.service("web", "svc", selector={"app": "web"}))
        for i in range(30):
            apply(
                "ADDED", "Pod", b.pod(f"p{i}", f"pod-{i}", node=f"n{i % 3}", labels={"app": "web"})
            )
        limits = ServerLimits(
            preface_timeout=0.5,
            max_streams_per_connection=64,
            max_header_list_size=8192,
            max_request_message_size=64 * 1024,
            stall_timeout=2,
        )
        self.server = GrpcServer(
            {"/metadata.Metadata/Watch": WatchService(self.hub).watch}, limits=limits
        )
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        self.ready.wait(10)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(self.server.serve, "127.0.0.1", 0)
            self.cancel = nursery.cancel_scope.cancel
            self.ready.set()

    def stop(self) -> None:
        trio.from_thread.run_sync(self.cancel, trio_token=self.token)
        self.thread.join(10)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.stop()


def send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(0.05)
            while sock.recv(65536):
                pass
        except OSError:
            pass


def valid_request(
    node: str = "n0",
    extra_headers: list[tuple[str, str]] | None = None,
    streams: int = 1,
    payload: bytes | None = None,
) -> bytes:
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    c.initiate_connection()
    for i in range(streams):
        sid = 2 * i + 1
        c.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/metadata.Metadata/Watch"),
                (":authority", "x"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *(extra_headers or []),
            ],
        )
        body = (
            payload
            if payload is not None
            else encode_message(pb.Selector(nodeName=node).SerializeToString())
        )
        for start in range(0, len(body), 16384):
            c.send_data(sid, body[start : start + 16384])
        c.end_stream(sid)
    return c.data_to_send()


inputs = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda data, cut, junk: data[:cut] + junk + data[cut:],
        st.just(valid_request()),
        st.integers(0, 200),
        st.binary(min_size=1, max_size=64),
    ),
    st.builds(
        lambda data, pos, byte: data[:pos] + bytes([byte]) + data[pos + 1 :],
        st.just(valid_request()),
        st.integers(0, 150),
        st.integers(0, 255),
    ),
    st.builds(
        lambda n: valid_request(extra_headers=[("x-big", "a" * n)]), st.integers(1000, 60000)
    ),
    st.builds(lambda n: valid_request(streams=n), st.integers(1, 200)),
    st.builds(
        lambda size: valid_request(
            payload=b"\x00" + size.to_bytes(4, "big") + b"x" * min(size, 60000)
        ),
        st.integers(0, 1 << 31),
    ),
    st.builds(lambda raw: valid_request(payload=raw), st.binary(max_size=300)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=inputs)
def test_server_survives_fuzzed_input(served: Served, data: bytes) -> None:
    send_raw(served.port, data)
    assert served.thread.is_alive()


def test_healthy_subscriber_exact_and_memory_bounded_under_fuzz(served: Served) -> None:
    healthy = GrpcWatch(f"127.0.0.1:{served.port}", "n1").start()
    tracemalloc.start()
    for i in range(300):
        send_raw(served.port, valid_request(streams=50) if i % 3 == 0 else bytes([i % 256]) * 500)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert current < 20 * 2**20, f"{current / 2**20:.1f} MiB still allocated after the fuzz"
    expected = oracle.view(
        served.hub.state.by_kind(), "n1", frozenset({"Pod", "Namespace", "Service"})
    )
    # every fuzzed stream is cleaned up (the server notices closed connections asynchronously)
    deadline = time.monotonic() + 20
    while (
        healthy.current != expected or served.hub.subscriptions.count() != 1
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert healthy.current == expected and healthy.error is None
    assert served.hub.subscriptions.count() == 1
    healthy.close()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.just(b"\n"),
            st.just(b'{"type":"ADDED","object":{"metadata":{"uid":"x"}}}\n'),
        ),
        max_size=30,
    )
)
def test_watch_decoder_only_raises_documented_errors(chunks: list[bytes]) -> None:
    decoder = WatchDecoder(max_line_bytes=1000)
    try:
        for chunk in chunks:
            for line in decoder.feed(chunk):
                with contextlib.suppress(msgspec.DecodeError):
                    decode_event(line)
        decoder.end()
    except (LineTooLong, TruncatedLine):
        pass
