"""Multiplexing figure for bench/abuse.py: the initial sync of N views read over N streams on ONE
HTTP/2 connection, or over N connections of one stream each (same views, same client code).

``sync_views`` returns the number of messages read; the caller times it and reads the
collector's CPU from /proc. Windows are large, so the client is never what slows a stream.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

from metacollector.grpc.framing import MessageDecoder, encode_message
from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS

WINDOW = 16 * 1024 * 1024

_counts: dict[str, int] = {}  # node -> messages of its initial sync, learnt on the first run


async def _streams(host: str, port: int, nodes: list[str], quiet: float) -> dict[str, int]:
    """Watch ``nodes`` on one connection until each has its known count (or, the first time,
    until nothing came for ``quiet`` seconds); messages per node."""
    tcp = await trio.open_tcp_stream(host, port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW}
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(WINDOW - 65535)
    by_sid: dict[int, str] = {}
    decoders: dict[int, MessageDecoder] = {}
    got = dict.fromkeys(nodes, 0)
    for node in nodes:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/metadata.Metadata/Watch"),
                (":authority", f"{host}:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        selector = pb.Selector(nodeName=node, resourceKinds={k: "true" for k in FALCO_KINDS})
        conn.send_data(sid, encode_message(selector.SerializeToString()), end_stream=True)
        by_sid[sid], decoders[sid] = node, MessageDecoder(1 << 30)
    async with tcp:
        await tcp.send_all(conn.data_to_send())
        while not all(node in _counts and got[node] >= _counts[node] for node in nodes):
            data = b""
            with trio.move_on_after(quiet):
                data = await tcp.receive_some(1 << 20)
            if not data:
                break  # quiet (first run) or closed
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    sid = event.stream_id
                    got[by_sid[sid]] += len(decoders[sid].feed(event.data))
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
            pending = conn.data_to_send()
            if pending:
                await tcp.send_all(pending)
    return got


async def sync_views(host: str, port: int, nodes: list[str], *, shared: bool) -> int:
    """Read the initial sync of every node's view; ``shared``: all streams on one connection."""
    results: list[dict[str, int]] = []

    async def run(part: list[str]) -> None:
        results.append(await _streams(host, port, part, quiet=1.0))

    async with trio.open_nursery() as nursery:
        for part in [nodes] if shared else [[n] for n in nodes]:
            nursery.start_soon(run, part)
    merged = {k: v for r in results for k, v in r.items()}
    for node, n in merged.items():
        _counts.setdefault(node, n)
    return sum(merged.values())
