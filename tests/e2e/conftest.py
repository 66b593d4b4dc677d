"""End-to-end fixtures: API server (emulator, or a real cluster when
METACOLLECTOR_TEST_KUBECONFIG is set) -> collector in-process -> grpcio subscribers."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio
import trustme

from metacollector.app import Running, serve
from metacollector.kube.client import make_client
from metacollector.kube.config import load_kubeconfig
from metacollector.settings import BindAddress, Settings
from tests.e2e.cluster import Cluster
from tests.e2e.grpc_watch import GrpcWatch

REAL_KUBECONFIG = os.environ.get("METACOLLECTOR_TEST_KUBECONFIG")


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
    settings = settings or Settings(
        metrics_bind="127.0.0.1:0",
        health_bind="127.0.0.1:0",
        broker_bind=BindAddress("127.0.0.1", 0),
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


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_settings(ca: trustme.CA, tmp: Path, mtls: bool, node_binding: bool = False) -> Settings:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    return Settings(
        metrics_bind="127.0.0.1:0",
        health_bind="127.0.0.1:0",
        broker_bind=BindAddress("127.0.0.1", 0),
        server_cert=str(tmp / "server.pem"),
        server_key=str(tmp / "server.key"),
        client_ca=str(tmp / "ca.pem") if mtls else None,
        node_binding=node_binding,
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


@pytest.fixture(params=["plaintext", "tls", "mtls"])
async def env(
    request: pytest.FixtureRequest, nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> AsyncIterator[Env]:
    """Every end-to-end scenario runs over plaintext h2c, TLS and mutual TLS."""
    transport = request.param
    settings = None if transport == "plaintext" else tls_settings(ca, tmp_path, transport == "mtls")
    async for e in start_env(nursery, settings):
        if transport != "plaintext":
            e.grpc_credentials = client_credentials(
                ca, "falco-sensor" if transport == "mtls" else None
            )
            e.target_host = "localhost"
        await e.ready()
        yield e


needs_emulator = pytest.mark.skipif(
    bool(REAL_KUBECONFIG), reason="needs the emulator's fault injection or admin endpoint"
)
