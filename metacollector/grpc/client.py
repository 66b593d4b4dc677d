"""A small Watch client on h2 + trio, for the demo and the benchmarks (tests use grpcio).

One TCP connection per subscriber, like Falco's plugin. Grants flow-control window as soon as
data is consumed, so the client is never what slows a stream down unless asked to be.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import trio

from metacollector.grpc.framing import MessageDecoder, encode_message
from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS

WINDOW = 16 * 1024 * 1024


class WatchEnded(Exception):
    """The server ended the stream; ``status`` is its grpc-status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"grpc-status {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class WatchStream:
    """Raw gRPC messages of one Watch stream, in arrival order."""

    _stream: trio.abc.Stream
    _conn: h2.connection.H2Connection
    _stream_id: int
    _decoder: MessageDecoder

    async def messages(self) -> AsyncIterator[list[bytes]]:
        """Yield the messages of each read (several per read when the server batches)."""
        while True:
            data = await self._stream.receive_some(1 << 20)
            if not data:
                raise WatchEnded(14, "connection closed")
            out: list[bytes] = []
            for event in self._conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    out.extend(self._decoder.feed(event.data))
                    self._conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    headers = dict(event.headers)
                    status = headers.get(b"grpc-status")
                    if status is not None:
                        if out:
                            yield out
                        message = headers.get(b"grpc-message", b"").decode()
                        raise WatchEnded(int(status), message)
                elif isinstance(event, h2.events.StreamReset):
                    raise WatchEnded(14, f"stream reset ({event.error_code})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise WatchEnded(14, f"connection terminated ({event.error_code})")
            pending = self._conn.data_to_send()
            if pending:
                await self._stream.send_all(pending)
            if out:
                yield out

    async def events(self) -> AsyncIterator[pb.Event]:
        async for batch in self.messages():
            for message in batch:
                yield pb.Event.FromString(message)


@asynccontextmanager
async def open_watch(
    host: str,
    port: int,
    node: str,
    kinds: tuple[str, ...] = FALCO_KINDS,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    metadata: Mapping[str, str] | None = None,
    window: int = WINDOW,
    local_address: str | None = None,
) -> AsyncIterator[WatchStream]:
    """Open one connection and one Watch stream for ``node``. A small ``window`` (with a slow
    reader) makes a slow subscriber; ``local_address`` binds the source IP (e.g. a 127.0.0.x
    posing as a pod for peer-address node binding)."""
    tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
    stream: trio.abc.Stream = tcp
    if ssl_context is not None:
        stream = trio.SSLStream(tcp, ssl_context, server_hostname=server_hostname or host)
    async with stream:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        conn.initiate_connection()
        if window > 65535:
            conn.increment_flow_control_window(window - 65535)
        stream_id = conn.get_next_available_stream_id()
        scheme = "https" if ssl_context is not None else "http"
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", scheme),
                (":path", "/metadata.Metadata/Watch"),
                (":authority", f"{host}:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *(metadata or {}).items(),
            ],
        )
        selector = pb.Selector(nodeName=node, resourceKinds={k: "true" for k in kinds})
        conn.send_data(stream_id, encode_message(selector.SerializeToString()), end_stream=True)
        await stream.send_all(conn.data_to_send())
        yield WatchStream(stream, conn, stream_id, MessageDecoder())


import h2.settings  # noqa: E402  (after h2.connection, which it needs)
