"""The whole pipeline under faults: emulator -> collector -> grpcio subscribers + a CloudEvents
receiver, with churn running; afterwards every subscriber's table must equal view(node) and the
receiver's final states must equal the cluster's objects."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from metacollector.emulator.churn import run_churn
from metacollector.model import KINDS
from metacollector.settings import BindAddress, Settings
from tests.cloudevents.receiver import Receiver, start_receiver
from tests.e2e.conftest import Env, start_env
from tests.e2e.grpc_watch import GrpcWatch
from tests.e2e.scenarios import converged

NODES = 6


@dataclass
class Chaos:
    env: Env
    receiver: Receiver
    watches: list[GrpcWatch]

    async def churn(self, seconds: float, rate: float = 40) -> None:
        await run_churn(self.env.cluster.client, rate, duration=seconds)

    async def check(self, timeout: float = 30) -> dict[str, Any]:
        """Every subscriber converged; the sink holds every object's final state."""
        for w in self.watches:
            await converged(self.env, w, timeout)
        objects = await self.env.cluster.objects()
        expected = {
            uid: (kind, obj.metadata.name, obj.metadata.labels or None)
            for kind in KINDS
            for uid, obj in objects[kind].items()
        }

        def received() -> dict[str, tuple[str, str, dict[str, str] | None]]:
            final = self.receiver.final
            return {
                u: (d["kind"], d["meta"]["name"], d["meta"].get("labels") or None)
                for u, d in final.items()
                if d != "deleted"
            }

        # The sink delivers asynchronously (and later than the gRPC streams under load): wait
        # for the last state of every object, not just for every object to be there.
        with trio.move_on_after(timeout):
            while received() != expected:
                await trio.sleep(0.1)
        assert set(received()) == set(expected)
        assert received() == expected
        return {
            "subscribers": len(self.watches),
            "objects": len(expected),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        }


@pytest.fixture
async def chaos(nursery: trio.Nursery) -> AsyncIterator[Chaos]:
    receiver = await start_receiver(nursery)
    settings = Settings(
        metrics_bind="127.0.0.1:0",
        health_bind="127.0.0.1:0",
        broker_bind=BindAddress("127.0.0.1", 0),
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
