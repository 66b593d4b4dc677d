"""An h2 client driving one server connection over in-memory streams, step by step.

The server's ``Connection`` runs in the test's nursery on a ``StapledStream`` of two memory
streams without pumps: the test puts bytes in with ``send`` and takes what the server wrote with
``read``, so a test decides every interleaving (reads, WINDOW_UPDATEs) itself. ``settle`` lets
the server run until all its tasks wait.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio
import trio.testing

from metacollector.grpc.framing import MessageDecoder, encode_message
from metacollector.grpc.server import GrpcServer, Handler, ServerLimits
from metacollector.proto import metadata_pb2 as pb

WATCH = "/metadata.Metadata/Watch"


def numbered(node: str, i: int, size: int) -> bytes:
    """Message ``i`` of ``node``'s view: distinct per stream, so mixed-up data shows."""
    return pb.Event(uid=f"{node}/{i}", kind="Pod", meta="x" * size).SerializeToString()


async def numbered_view(request: bytes, stream: object) -> None:
    """Handler: nodeName "name:n:size" -> n messages of ``size``, batches of ~16 KiB (as Watch
    sends), then it waits like a Watch does."""
    from metacollector.grpc.server import ServerStream

    assert isinstance(stream, ServerStream)
    name, n, size = pb.Selector.FromString(request).nodeName.split(":")
    batch: list[bytes] = []
    for i in range(int(n)):
        batch.append(numbered(name, i, int(size)))
        if sum(map(len, batch)) >= 16 * 1024:
            await stream.send_messages(batch)
            batch = []
    if batch:
        await stream.send_messages(batch)
    await trio.sleep_forever()


HANDLERS: dict[str, Handler] = {WATCH: numbered_view}


def selector(node: str) -> bytes:
    return encode_message(pb.Selector(nodeName=node).SerializeToString())


@dataclass
class Peer:
    server: GrpcServer
    to_server: trio.testing.MemoryReceiveStream
    from_server: trio.testing.MemorySendStream
    h2: h2.connection.H2Connection
    auto_ack: bool = True
    answer_pings: bool = True
    pings: int = 0
    messages: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    decoders: dict[int, MessageDecoder] = field(default_factory=dict)
    trailers: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    resets: set[int] = field(default_factory=set)
    goaway: h2.events.ConnectionTerminated | None = None
    unacked: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    data_frames: int = 0

    def ack(self) -> None:
        """Hand back the window of everything read so far."""
        for sid, n in self.unacked.items():
            if n:
                self.h2.acknowledge_received_data(n, sid)
        self.unacked.clear()

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.to_server.put_data(data)

    def request(self, node: str, path: str = WATCH, *, extra: list[tuple[str, str]] = ()) -> int:  # type: ignore[assignment]
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "x"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *extra,
            ],
        )
        self.h2.send_data(sid, selector(node), end_stream=True)
        self.decoders[sid] = MessageDecoder(1 << 30)
        self.send()
        return sid

    def read(self, max_bytes: int | None = None) -> int:
        """Take what the server wrote (up to ``max_bytes``), acknowledging DATA when
        ``auto_ack``; returns the bytes read."""
        try:
            data = self.from_server.get_data_nowait(max_bytes)
        except trio.WouldBlock:
            data = b""
        if not data:
            return 0
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.data_frames += 1
                sid = event.stream_id
                self.messages[sid].extend(self.decoders[sid].feed(event.data))
                self.unacked[sid] += event.flow_controlled_length
            elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                headers = dict(event.headers)
                if b"grpc-status" in headers:
                    self.trailers[event.stream_id] = headers
            elif isinstance(event, h2.events.PingReceived):
                self.pings += 1
            elif isinstance(event, h2.events.StreamReset):
                self.resets.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        if self.auto_ack:
            self.ack()
        if self.answer_pings:
            self.send()
        else:
            self.h2.data_to_send()  # h2's PING ack, withheld
        return len(data)

    async def settle(self) -> None:
        await trio.testing.wait_all_tasks_blocked()

    async def pump(self) -> None:
        """Let the server run and read everything, until it has nothing more to say."""
        while True:
            await self.settle()
            if not self.read():
                return

    def close(self) -> None:
        self.to_server.put_eof()


async def connect(
    nursery: trio.Nursery,
    server: GrpcServer | None = None,
    *,
    window: int = 65535,
    auto_ack: bool = True,
    limits: ServerLimits | None = None,
) -> Peer:
    """A server (unless given) and one client connection to it, preface exchanged."""
    server = server or GrpcServer(HANDLERS, limits=limits or ServerLimits())
    to_server, from_server = trio.testing.MemoryReceiveStream(), trio.testing.MemorySendStream()
    nursery.start_soon(server._connection, trio.StapledStream(from_server, to_server), None)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    conn.initiate_connection()
    peer = Peer(server, to_server, from_server, conn, auto_ack=auto_ack)
    peer.send()
    await peer.pump()
    return peer
