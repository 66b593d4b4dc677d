"""The emulator run in-process, for the tests, the demo and the benchmarks: start one with a
generated cluster (optionally over TLS) and get a handle with its URL, token and kubeconfig."""

from __future__ import annotations

import gc
import secrets
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
import trustme

from metacollector.emulator.server import Emulator, Faults
from metacollector.emulator.synthetic import generate_cluster


def kubeconfig_text(url: str, token: str, ca_pem: bytes | None = None) -> str:
    """A kubeconfig any client (kubectl included) can use."""
    import base64

    ca = f"    certificate-authority-data: {base64.b64encode(ca_pem).decode()}\n" if ca_pem else ""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: emulator\n  cluster:\n    server: {url}\n{ca}"
        "users:\n- name: emulator\n  user:\n"
        f"    token: {token}\n"
        "contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n"
        "current-context: emulator\n"
    )


@dataclass
class EmulatorHandle:
    url: str
    token: str
    kubeconfig: Path
    emulator: Emulator
    verify: ssl.SSLContext | bool = False

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            verify=self.verify,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(30.0, read=None),
        )

    async def admin(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.client() as client:
            if body is None and path.endswith("stats"):
                r = await client.get(path)
            else:
                r = await client.post(path, json=body or {})
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

    async def set_faults(self, **faults: Any) -> None:
        await self.admin("/admin/faults", faults)

    async def stats(self) -> dict[str, Any]:
        return await self.admin("/admin/stats")


def self_signed(host: str) -> tuple[ssl.SSLContext, bytes]:
    """A server TLS context with a fresh CA-issued certificate for localhost/``host``; the CA
    PEM goes into the kubeconfig (like a real cluster's certificate-authority-data)."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", host).configure_cert(server_ctx)
    return server_ctx, ca.cert_pem.bytes()


def client_context(ca_pem: bytes | None) -> ssl.SSLContext | bool:
    if ca_pem is None:
        return False
    return ssl.create_default_context(cadata=ca_pem.decode())


def load_cluster(emulator: Emulator, nodes: int, pods_per_node: int, seed: int) -> None:
    """Load a generated cluster. The cyclic GC is paused meanwhile: everything made here lives
    on, and its full collections over the growing heap took ~14 s of a 150,000-pod start."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for plural, obj in generate_cluster(nodes, pods_per_node, seed=seed):
            emulator.store.load(plural, obj)
    finally:
        if enabled:
            gc.enable()


@asynccontextmanager
async def running_emulator(
    *,
    nodes: int = 0,
    pods_per_node: int = 0,
    seed: int = 1,
    tls: bool = False,
    bookmark_interval: float = 60.0,
    history_size: int = 10000,
    streaming_lists: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults | None = None,
) -> AsyncIterator[EmulatorHandle]:
    token = secrets.token_hex(16)
    server_ctx: ssl.SSLContext | None = None
    client_verify: ssl.SSLContext | bool = False
    ca_pem: bytes | None = None
    if tls:
        server_ctx, ca_pem = self_signed(host)
        client_verify = client_context(ca_pem)
    emulator = Emulator(
        token=token,
        history_size=history_size,
        bookmark_interval=bookmark_interval,
        streaming_lists=streaming_lists,
        faults=faults,
        ssl_context=server_ctx,
    )
    load_cluster(emulator, nodes, pods_per_node, seed)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(emulator.serve, host, port)
        url = f"{'https' if tls else 'http'}://{host}:{bound}"
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(kubeconfig_text(url, token, ca_pem))
            yield EmulatorHandle(url, token, kubeconfig, emulator, client_verify)
        nursery.cancel_scope.cancel()
