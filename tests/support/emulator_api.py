"""Talking to an API server (the emulator, or a real one) over REST in the emulator tests."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from metacollector.emulator.inprocess import EmulatorHandle

MERGE = {"Content-Type": "application/merge-patch+json"}
SMP = {"Content-Type": "application/strategic-merge-patch+json"}


async def watch_lines(
    client: httpx.AsyncClient,
    path: str,
    params: dict[str, str],
    n: int,
    timeout: float = 5,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with trio.move_on_after(timeout):
        async with client.stream(
            "GET", path, params={"watch": "1", **params}, headers=headers or {}
        ) as r:
            assert r.status_code == 200, await r.aread()
            buf = b""
            async for chunk in r.aiter_bytes():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    out.append(json.loads(line))
                    if len(out) >= n:
                        return out
    return out


@dataclass
class Api:
    client: httpx.AsyncClient
    emulator: EmulatorHandle | None

    def ns(self) -> str:
        return f"t-{uuid.uuid4().hex[:8]}"

    async def create_ns(self) -> str:
        name = self.ns()
        r = await self.client.post("/api/v1/namespaces", json={"metadata": {"name": name}})
        assert r.status_code == 201, r.text
        return name

    async def pod(
        self, ns: str, name: str, node: str = "node-a", labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        r = await self.client.post(
            f"/api/v1/namespaces/{ns}/pods",
            json={
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": labels or {}},
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}],
                },
            },
        )
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def deployment(
        self, ns: str, name: str, containers: list[dict[str, Any]], **meta: Any
    ) -> httpx.Response:
        """POST a one-replica Deployment selecting a=b; the response, for the test to check."""
        return await self.client.post(
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            json={
                "metadata": {"name": name, **meta},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": containers},
                    },
                },
            },
        )


KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")


def kubectl_env(emu: EmulatorHandle) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(emu.kubeconfig)}


async def kubectl(emu: EmulatorHandle, *args: str) -> str:
    """The stdout of the kubectl on PATH run against ``emu`` (the test fails if it fails)."""
    assert KUBECTL is not None
    proc = await trio.run_process(
        [KUBECTL, *args],
        capture_stdout=True,
        capture_stderr=True,
        env=kubectl_env(emu),
        check=False,
    )  # type: ignore[list-item]
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()  # type: ignore[no-any-return]
