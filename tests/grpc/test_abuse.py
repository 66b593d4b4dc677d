"""Abuse over real sockets against the whole collector (emulator behind it): each attack is
shown to have been met by the server's own figures (request bytes held, frames, limit hits,
GOAWAY), while a healthy grpcio subscriber on another connection keeps an exact table and gets
a change (its latency printed; performance itself is measured by bench/abuse.py)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import AsyncIterator

import pytest
import trio

from metacollector import metrics
from metacollector.grpc.server import GrpcServer
from metacollector.testing.h2_attacks import (
    h2load_flood,
    half_sent,
    nghttp2_tool,
    one_byte_windows,
    rapid_reset,
)
from tests.support.env import Env, needs_emulator, start_env
from tests.support.grpc_watch import GrpcWatch
from tests.support.scenarios import converged

pytestmark = [needs_emulator, pytest.mark.slow]
HOST = "127.0.0.1"
CALM = 11  # GOAWAY ENHANCE_YOUR_CALM


def hits(limit: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("metacollector_limit_hits_total", {"limit": limit}) or 0
    )


def rss_mb() -> float:
    status = pathlib.Path("/proc/self/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024


@pytest.fixture
async def env(nursery: trio.Nursery) -> AsyncIterator[Env]:
    async for e in start_env(nursery, None, nodes=4, pods_per_node=20):
        await e.ready(30)
        yield e


def server(env: Env) -> GrpcServer:
    assert env.collector.grpc is not None
    return env.collector.grpc


async def healthy_change(env: Env, watch: GrpcWatch) -> float:
    """Stamp a pod of the healthy subscriber's node; ms until its event arrived."""
    await converged(env, watch, timeout=20)
    objects = await env.cluster.objects()
    pod = next(p for p in objects["Pod"].values() if p.spec.nodeName == watch.node)  # type: ignore[attr-defined]
    stamp = str(time.time_ns())
    before = len(watch.events)
    start = time.monotonic()
    meta = pod.metadata
    patch = {"metadata": {"labels": {"s": stamp}}}
    await env.cluster.patch("Pod", meta.namespace, meta.name, patch)
    await watch.wait_for(lambda w: any(stamp in e.meta for e in w.events[before:]), timeout=10)
    latency = (time.monotonic() - start) * 1000
    assert json.loads(watch.events[-1].meta)["labels"]["s"] == stamp
    await converged(env, watch, timeout=20)
    assert watch.error is None
    return latency


async def test_half_sent_requests_hold_little(env: Env, nursery: trio.Nursery) -> None:
    watch = env.watch("node-0")
    await healthy_change(env, watch)
    baseline = rss_mb()
    port = env.collector.grpc_port
    attack: dict[str, object] = {}

    async def attacker() -> None:
        attack.update(await half_sent(HOST, port, connections=4, streams=40, hold=4.0))

    nursery.start_soon(attacker)
    pool = server(env).request_pool
    window = server(env).limits.connection_window
    with trio.fail_after(10):
        while pool.used < 4 * window * 0.9:  # the attack is in: every connection window full
            await trio.sleep(0.05)
    latency = await healthy_change(env, watch)
    grown = rss_mb() - baseline
    held = pool.used
    with trio.fail_after(15):
        while not attack:
            held = max(held, pool.used)
            await trio.sleep(0.01)
    assert held <= 4 * window  # 160 streams x ~60 KB offered, 1 MiB held at most
    assert grown < 50, grown
    assert attack["bytes_sent"] <= 4 * window  # the rest was never let in (no window)
    print(f"half-sent: {held} bytes held, RSS +{grown:.1f} MB, healthy change {latency:.1f} ms")


async def test_one_byte_windows_cost_few_frames(env: Env) -> None:
    watch = env.watch("node-0")
    await healthy_change(env, watch)
    counters = server(env).counters
    updates0, before = counters.window_updates, hits("tiny_window_rate")
    attack = await one_byte_windows(HOST, env.collector.grpc_port, "node-1", clients=3, seconds=10)
    handled = counters.window_updates - updates0
    latency = await healthy_change(env, watch)
    assert attack["goaways"] == [CALM, CALM, CALM]
    assert hits("tiny_window_rate") == before + 3
    # each client: < 1 KiB of window opened, so no DATA at all; and only about the budget's
    # worth (100 at once + 50/s) of its updates handled before its GOAWAY (was 43,689 frames)
    assert attack["data_frames"] == 0
    assert handled < 3 * 400, handled
    print(
        f"1-byte windows: {attack['updates']} updates sent, {handled} handled, "
        f"healthy change {latency:.1f} ms"
    )


async def test_rapid_reset_flood_ends_in_goaway(env: Env) -> None:
    watch = env.watch("node-0")
    await healthy_change(env, watch)
    before = hits("reset_rate")
    attack = await rapid_reset(HOST, env.collector.grpc_port, streams=20000)
    latency = await healthy_change(env, watch)
    assert attack["goaway"] == CALM and attack["streams_sent"] < 20000
    assert hits("reset_rate") == before + 1
    print(f"rapid reset: GOAWAY after {attack['streams_sent']} streams, healthy {latency:.1f} ms")


async def test_h2load_flood_ends_in_goaway(env: Env) -> None:
    if nghttp2_tool("h2load") is None:
        pytest.skip("h2load (Debian nghttp2-client) not installable here")
    watch = env.watch("node-0")
    await healthy_change(env, watch)
    before = hits("error_rate") + hits("process_error_rate")
    attack = await h2load_flood(HOST, env.collector.grpc_port, connections=50, streams=50)
    latency = await healthy_change(env, watch)
    assert attack["succeeded"] == 0
    # every one of the 50 connections was sent away for its error responses
    assert hits("error_rate") + hits("process_error_rate") == before + 50
    print(f"h2load flood: {attack}, healthy change {latency:.1f} ms")
