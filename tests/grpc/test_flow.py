"""Flow control over in-memory streams: many streams of one connection sharing a small
connection window all complete, exactly, and a big stream holds a small one back by at most a
few turns. The client here is h2 in the test; it decides every read and WINDOW_UPDATE."""

from __future__ import annotations

import h2.settings
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as strat

from metacollector.grpc.protocol import MAX_TURN_BYTES, TURN_BYTES
from metacollector.grpc.server import GrpcServer, ServerLimits
from tests.support.h2_peer import HANDLERS, Peer, connect, numbered


def expected(name: str, n: int, size: int) -> list[bytes]:
    return [numbered(name, i, size) for i in range(n)]


def assert_exact(peer: Peer, sids: dict[int, tuple[str, int, int]]) -> None:
    for sid, (name, n, size) in sids.items():
        assert peer.messages[sid] == expected(name, n, size), f"stream {name}"
    assert not peer.trailers and not peer.resets and peer.goaway is None


@pytest.mark.parametrize("streams", [2, 5, 50])
async def test_streams_share_a_small_connection_window(nursery: trio.Nursery, streams: int) -> None:
    # Each stream may hold 1 MiB in flight, the connection only 64 KiB: every stream waits
    # on the connection window again and again, woken by the client's connection updates.
    peer = await connect(nursery, window=1 << 20, limits=ServerLimits(stall_timeout=3600))
    view = (60, 1000) if streams == 50 else (300, 1000)
    sids = {peer.request(f"n{k}:{view[0]}:{view[1]}"): (f"n{k}", *view) for k in range(streams)}
    await peer.pump()
    assert_exact(peer, sids)
    counters = peer.server.counters
    assert counters.data_bytes >= streams * view[0] * view[1]


async def test_big_sync_holds_another_stream_back_by_a_few_turns(nursery: trio.Nursery) -> None:
    peer = await connect(nursery, window=1 << 20)
    big = peer.request("big:2000:1000")  # ~2 MB
    for _ in range(5):  # the big stream is well under way
        await peer.settle()
        peer.read()
    before = len(b"".join(peer.messages[big]))
    small = peer.request("small:10:100")
    while len(peer.messages[small]) < 10:
        await peer.settle()
        assert peer.read(), "stalled"
    held_back = len(b"".join(peer.messages[big])) - before
    # what was in flight (the 64 KiB connection window) plus a turn or two of the big stream
    assert held_back <= 65535 + 2 * MAX_TURN_BYTES, held_back
    await peer.pump()
    assert_exact(peer, {big: ("big", 2000, 1000), small: ("small", 10, 100)})


async def test_connection_update_wakes_every_blocked_stream(nursery: trio.Nursery) -> None:
    """The issue's lost wake-up: with every stream blocked on the connection window, one
    connection WINDOW_UPDATE must reach all of them (each gets a turn), not just the last."""
    peer = await connect(nursery, window=1 << 20, auto_ack=False)
    sids = [peer.request(f"n{k}:100:1000") for k in range(5)]
    await peer.pump()  # 64 KiB arrive, then everybody waits for the connection window
    assert all(st.send.name == "BLOCKED_CONNECTION" for st in _cores(peer))
    got = {sid: len(peer.messages[sid]) for sid in sids}
    peer.h2.increment_flow_control_window(5 * TURN_BYTES)
    peer.send()
    await peer.pump()
    gained = [len(peer.messages[sid]) - got[sid] for sid in sids]
    assert sum(1 for g in gained if g > 0) >= 4, gained  # the turns went round, not to one


def _cores(peer: Peer) -> list:  # type: ignore[type-arg]
    (conn,) = peer.server.connections
    return list(conn.core.streams.values())


# --- hypothesis: any interleaving of client reads and WINDOW_UPDATEs ---------------------------

Action = tuple[str, int, int]
actions = strat.lists(
    strat.one_of(
        strat.tuples(strat.just("read"), strat.integers(1, 70000), strat.just(0)),
        strat.tuples(strat.just("conn"), strat.integers(1, 40000), strat.just(0)),
        strat.tuples(strat.just("stream"), strat.integers(1, 40000), strat.integers(0, 2)),
        strat.tuples(strat.just("ack"), strat.just(0), strat.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_any_interleaving_of_reads_and_window_updates_completes_exactly(
    schedule: list[Action],
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = GrpcServer(HANDLERS, limits=ServerLimits(stall_timeout=3600))
            peer = await connect(nursery, server, window=20000, auto_ack=False)
            views = {peer.request(f"n{k}:40:900"): (f"n{k}", 40, 900) for k in range(3)}
            order = list(views)
            for kind, amount, which in schedule:
                await peer.settle()
                if kind == "read":
                    peer.read(amount)
                elif kind == "conn":
                    peer.h2.increment_flow_control_window(amount)
                elif kind == "stream":
                    sid = order[which]
                    if not peer.h2.streams[sid].closed:
                        peer.h2.increment_flow_control_window(amount, stream_id=sid)
                elif kind == "ack":  # hand back everything read so far
                    peer.ack()
                peer.send()
            # then a well-behaved client: read and acknowledge everything
            peer.auto_ack = True
            for sid in order:
                peer.h2.increment_flow_control_window(1 << 20, stream_id=sid)
            peer.h2.increment_flow_control_window(1 << 22)
            peer.send()
            await peer.pump()
            assert_exact(peer, views)
            peer.close()
            nursery.cancel_scope.cancel()

    trio.run(main)


async def test_settings_change_of_initial_window_wakes_blocked_streams(
    nursery: trio.Nursery,
) -> None:
    peer = await connect(nursery, window=1024, auto_ack=False)
    sids = {peer.request(f"n{k}:50:1000"): (f"n{k}", 50, 1000) for k in range(3)}
    await peer.pump()
    assert all(st.send.name == "BLOCKED_STREAM" for st in _cores(peer))
    # no WINDOW_UPDATE at all: only the new initial window (RFC 9113 6.9.2 applies the
    # difference to every open stream) opens them
    got = {sid: len(peer.messages[sid]) for sid in sids}
    peer.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    peer.send()
    await peer.pump()
    assert all(len(peer.messages[sid]) > got[sid] for sid in sids), (got, peer.messages.keys())
    peer.auto_ack = True  # then the connection window, as a normal client hands it back
    peer.ack()
    peer.send()
    await peer.pump()
    assert_exact(peer, sids)
