"""A slow subscriber (about one message per second) delays nobody, and its mailbox stays bounded
by its node's view while it lags (level-triggered delivery)."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import trio

from metacollector.grpc.client import open_watch
from tests.support.env import Env, needs_emulator
from tests.support.scenarios import build, converged

pytestmark = needs_emulator
STAMP = "stamp"


@pytest.mark.parametrize("env", ["plaintext"], indirect=True)  # the slow raw client speaks h2c
async def test_slow_subscriber_does_not_delay_fast_ones(env: Env, nursery: trio.Nursery) -> None:
    s = await build(env)
    node, other = s.nodes[0], s.nodes[1]
    slow_received: list[str] = []

    async def slow_reader() -> None:
        # 1 KiB window, one read per second: roughly one message per second
        async with open_watch("127.0.0.1", env.collector.grpc_port, node, window=1024) as stream:
            async for batch in stream.messages():
                slow_received.extend(m[:20].hex() for m in batch)
                await trio.sleep(1)

    nursery.start_soon(slow_reader)
    fast_same, fast_other = env.watch(node), env.watch(other)
    await converged(env, fast_same), await converged(env, fast_other)
    latencies: list[float] = []
    for i in range(30):
        stamp = str(time.time_ns())
        pod = "bare" if i % 2 else s.objs["web1"]["metadata"]["name"]
        target = fast_same if i % 2 else fast_other
        before = len(target.events)
        await env.cluster.patch("Pod", s.ns, pod, {"metadata": {"labels": {STAMP: stamp}}})
        await target.wait_for(lambda w, n=before: len(w.events) > n, 5)
        event = target.events[-1]
        assert json.loads(event.meta)["labels"][STAMP] == stamp
        latencies.append((time.time_ns() - int(stamp)) / 1e6)
    await converged(env, fast_same), await converged(env, fast_other)
    # the slow one is far behind, yet its pending work is bounded by its node's view
    mailboxes = env.collector.hub.subscriptions.by_node[node]
    view = len(list(env.collector.hub.state.view(node)))
    assert all(len(m.dirty) <= view for m in mailboxes)
    assert len(slow_received) < len(fast_same.events)
    print(
        f"fast subscriber latency with a slow one on the same node: median "
        f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms "
        f"(slow one received {len(slow_received)} messages)"
    )
