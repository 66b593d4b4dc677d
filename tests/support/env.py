"""The end-to-end environment: an API server (the in-process emulator, or a real cluster when
METACOLLECTOR_TEST_KUBECONFIG is set) -> the collector in-process -> grpcio subscribers."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio
import trustme

from metacollector.app import Running, serve
from metacollector.binding import NodeBinding
from metacollector.kube.client import make_client
from metacollector.kube.config import load_kubeconfig
from metacollector.settings import BindAddress, Settings
from tests.support.cluster import Cluster
from tests.support.grpc_watch import GrpcWatch

REAL_KUBECONFIG = os.environ.get("METACOLLECTOR_TEST_KUBECONFIG")


def local_settings(**overrides: Any) -> Settings:
    """Settings serving metrics, probes and gRPC on 127.0.0.1, on ports the OS picks."""
    return Settings(
        metrics_bind="127.0.0.1:0",
        health_bind="127.0.0.1:0",
        broker_bind=BindAddress("127.0.0.1", 0),
        **overrides,
    )


# Fault injection and /admin exist only in the emulator: such tests skip against a real cluster.
needs_emulator = pytest.mark.skipif(
    bool(REAL_KUBECONFIG), reason="needs the emulator's fault injection or admin endpoint"
)


@dataclass
class Env:
    cluster: Cluster
    collector: Running
    kubeconfig: Path
    emulator: Any = None  # the EmulatorHandle, None against a real cluster
    watches: list[GrpcWatch] = field(default_factory=list)
    grpc_credentials: Any = None
    grpc_options: list[tuple[str, Any]] = field(default_factory=list)
    target_host: str = "127.0.0.1"

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:6]}"

    def watch(self, node: str, kinds: tuple[str, ...] | None = None) -> GrpcWatch:
        w = GrpcWatch(
            f"{self.target_host}:{self.collector.grpc_port}",
            node,
            credentials=self.grpc_credentials,
            options=self.grpc_options,
            **({"kinds": kinds} if kinds else {}),
        ).start()
        self.watches.append(w)
        return w

    async def http(self, path: str, port: int | None = None) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{port or self.collector.health_port}{path}")

    async def ready(self, timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while (await self.http("/readyz")).status_code != 200:
                await trio.sleep(0.05)


async def start_env(
    nursery: trio.Nursery, settings: Settings | None = None, **emulator_opts: Any
) -> AsyncIterator[Env]:
    settings = settings or local_settings(
        log_level="info",
    )
    if REAL_KUBECONFIG:
        cfg = load_kubeconfig(REAL_KUBECONFIG)
        async with make_client(cfg) as client:
            running = await nursery.start(
                lambda task_status: serve(settings, kubeconfig=cfg, task_status=task_status)
            )
            env = Env(Cluster(client), running, Path(REAL_KUBECONFIG))
            yield env
            _close(env)
            running.cancel_scope.cancel()
        return
    from metacollector.emulator.inprocess import running_emulator

    emulator_opts.setdefault("bookmark_interval", 0.5)
    async with running_emulator(**emulator_opts) as emu:
        cfg = load_kubeconfig(str(emu.kubeconfig))
        running = await nursery.start(
            lambda task_status: serve(settings, kubeconfig=cfg, task_status=task_status)
        )
        async with emu.client() as client:
            env = Env(Cluster(client), running, emu.kubeconfig, emulator=emu)
            yield env
            _close(env)
            running.cancel_scope.cancel()


def _close(env: Env) -> None:
    for w in env.watches:
        w.close()


def tls_settings(ca: trustme.CA, tmp: Path, mtls: bool, node_binding: bool = False) -> Settings:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return local_settings(
        server_cert=str(tmp / "server.pem"),
        server_key=str(tmp / "server.key"),
        client_ca=str(tmp / "ca.pem") if mtls else None,
        node_binding=NodeBinding.CERTIFICATE if node_binding else NodeBinding.OFF,
    )


def client_credentials(ca: trustme.CA, client_name: str | None) -> grpc.ChannelCredentials:
    if client_name is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    client = ca.issue_cert(client_name)
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes(),
        certificate_chain=client.cert_chain_pems[0].bytes(),
    )


@asynccontextmanager
async def environment(
    nursery: trio.Nursery, settings: Settings | None = None, **emulator_opts: Any
) -> AsyncIterator[Env]:
    steps = start_env(nursery, settings, **emulator_opts)
    env = await steps.__anext__()
    try:
        yield env
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await steps.__anext__()
