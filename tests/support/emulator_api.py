"""Talking to an API server (the emulator, or a real one) over REST in the emulator tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from metacollector.emulator.harness import EmulatorHandle

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
