"""The chaos harness: the whole pipeline (emulator -> collector -> grpcio subscribers + a
CloudEvents receiver) with churn, and the checks every chaos test ends with."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

import trio

from metacollector.emulator.churn import run_churn
from metacollector.model import KINDS
from metacollector.testing.receiver import Receiver
from tests.support.env import Env
from tests.support.grpc_watch import GrpcWatch
from tests.support.scenarios import converged


async def cluster_changed(emulator: Any, changes: int = 10, timeout: float = 10) -> None:
    """Wait until the emulator's cluster has changed ``changes`` times from now (churn is
    under way), polling its ``/admin/stats`` resourceVersion."""
    start = int((await emulator.stats())["resourceVersion"])
    with trio.fail_after(timeout):
        while int((await emulator.stats())["resourceVersion"]) < start + changes:
            await trio.sleep(0.05)


@dataclass
class Chaos:
    env: Env
    receiver: Receiver
    watches: list[GrpcWatch]

    async def churn(self, seconds: float, rate: float = 40) -> None:
        await run_churn(self.env.cluster.client, rate, duration=seconds)

    def relists(self) -> dict[str, int]:
        """Relists so far, by resource (each reflector's own count)."""
        return {r.resource.plural: r.relists for r in self.env.collector.reflectors}

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
