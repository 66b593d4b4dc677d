"""The whole pipeline under faults: emulator -> collector -> grpcio subscribers + a CloudEvents
receiver, with churn running; afterwards every subscriber's table must equal view(node) and the
receiver's final states must equal the cluster's objects (the harness: tests/support/chaos.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from metacollector.testing.receiver import start_receiver
from tests.support.chaos import Chaos
from tests.support.env import local_settings, start_env
from tests.support.scenarios import converged

NODES = 6


@pytest.fixture
async def chaos(nursery: trio.Nursery) -> AsyncIterator[Chaos]:
    receiver = await start_receiver(nursery)
    settings = local_settings(
        stall_timeout=2.0,
        cloudevents_sink=f"http://127.0.0.1:{receiver.port}/",
        cloudevents_replay=True,  # the receiver must also hold the objects that existed at start
    )
    async for env in start_env(
        nursery, settings, nodes=NODES, pods_per_node=6, bookmark_interval=0.5
    ):
        await env.ready()
        await env.emulator.set_faults(only_user_agent="metacollector")
        watches = [env.watch(f"node-{i}") for i in range(NODES)]
        chaos = Chaos(env, receiver, watches)
        for w in watches:
            await converged(env, w)
        yield chaos
