"""mTLS node binding: a client certificate may watch only the node named in its CN or DNS SAN."""

from __future__ import annotations

from pathlib import Path

import grpc
import trio
import trustme

from metacollector import metrics
from tests.support.env import client_credentials, needs_emulator, start_env, tls_settings
from tests.support.grpc_watch import GrpcWatch
from tests.support.scenarios import converged

pytestmark = needs_emulator


async def test_certificate_bound_to_its_node(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    settings = tls_settings(ca, tmp_path, mtls=True, node_binding=True)
    async for env in start_env(nursery, settings, nodes=2, pods_per_node=2):
        await env.ready()
        target = f"localhost:{env.collector.grpc_port}"
        own = GrpcWatch(target, "node-0", credentials=client_credentials(ca, "node-0")).start()
        env.watches.append(own)
        await converged(env, own)
        denied_before = metrics.LIMIT_HITS.labels("node_binding")._value.get()
        other = GrpcWatch(target, "node-1", credentials=client_credentials(ca, "node-0")).start()
        env.watches.append(other)
        assert await other.wait_ended() == grpc.StatusCode.PERMISSION_DENIED
        assert "node-1" in other.error.details()  # type: ignore[union-attr]
        assert metrics.LIMIT_HITS.labels("node_binding")._value.get() == denied_before + 1
        await converged(env, own)  # the bound subscriber keeps streaming
