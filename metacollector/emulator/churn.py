"""A churn driver: pod create/delete/relabel/reschedule and deployment scale, through REST.

Every change that creates or relabels a pod stamps ``stamp_label`` with the wall-clock time in
ns, so a subscriber can measure commit-to-receipt latency.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

log = logging.getLogger("metacollector.emulator.churn")
MERGE = {"Content-Type": "application/merge-patch+json"}


@dataclass
class ChurnStats:
    done: dict[str, int] = field(default_factory=dict)
    failed: int = 0

    def count(self, op: str) -> None:
        self.done[op] = self.done.get(op, 0) + 1


async def _list(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cont = ""
    while True:
        r = await client.get(path, params={"limit": 500, **({"continue": cont} if cont else {})})
        r.raise_for_status()
        body = r.json()
        items += body["items"]
        cont = body["metadata"].get("continue", "")
        if not cont:
            return items


async def run_churn(
    client: httpx.AsyncClient,
    rate: float,
    *,
    duration: float | None = None,
    seed: int = 7,
    stamp_label: str = "bench-stamp",
    stats: ChurnStats | None = None,
    concurrency: int = 32,
) -> ChurnStats:
    """Perform ``rate`` changes per second (for ``duration`` s, or until cancelled)."""
    rng = random.Random(seed)
    stats = stats or ChurnStats()
    pods = [
        p
        for p in await _list(client, "/api/v1/pods")
        if p["metadata"].get("ownerReferences") and p["metadata"]["namespace"] != "kube-system"
    ]
    nodes = [n["metadata"]["name"] for n in await _list(client, "/api/v1/nodes")] or ["node-0"]
    deployments = await _list(client, "/apis/apps/v1/deployments")
    limiter = trio.CapacityLimiter(concurrency)

    def take(index: int) -> dict[str, Any]:
        """Remove pods[index] in O(1) (order does not matter)."""
        pods[index], pods[-1] = pods[-1], pods[index]
        return pods.pop()

    async def change(op: str) -> None:
        async with limiter:
            try:
                await _do(op)
                stats.count(op)
            except (httpx.HTTPError, KeyError, IndexError) as exc:
                stats.failed += 1
                log.debug("churn op failed", extra={"op": op, "error": str(exc)})

    async def _do(op: str) -> None:
        stamp = str(time.time_ns())
        if op == "relabel" and pods:
            p = rng.choice(pods)
            meta = p["metadata"]
            r = await client.patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                json={"metadata": {"labels": {stamp_label: stamp}}},
                headers=MERGE,
            )
            r.raise_for_status()
        elif op in ("create", "reschedule") and pods:
            template = take(rng.randrange(len(pods))) if op == "reschedule" else rng.choice(pods)
            if op == "reschedule":
                meta = template["metadata"]
                r = await client.delete(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                )
                r.raise_for_status()
            new = copy.deepcopy(template)
            meta = new["metadata"]
            for key in ("uid", "resourceVersion", "creationTimestamp"):
                meta.pop(key, None)
            meta["name"] = f"{meta.get('generateName') or 'churn-'}{rng.getrandbits(40):010x}"
            meta.setdefault("labels", {})[stamp_label] = stamp
            new["spec"]["nodeName"] = rng.choice(nodes)
            r = await client.post(f"/api/v1/namespaces/{meta['namespace']}/pods", json=new)
            r.raise_for_status()
            pods.append(r.json())
        elif op == "delete" and len(pods) > 1:
            p = take(rng.randrange(len(pods)))
            meta = p["metadata"]
            r = await client.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
            r.raise_for_status()
        elif op == "scale" and deployments:
            d = rng.choice(deployments)["metadata"]
            r = await client.patch(
                f"/apis/apps/v1/namespaces/{d['namespace']}/deployments/{d['name']}",
                json={"spec": {"replicas": rng.randint(1, 9)}},
                headers=MERGE,
            )
            r.raise_for_status()

    ops = ["relabel"] * 50 + ["create"] * 15 + ["delete"] * 15 + ["reschedule"] * 15 + ["scale"] * 5
    interval = 1.0 / rate
    with trio.move_on_after(duration if duration is not None else float("inf")):
        async with trio.open_nursery() as nursery:
            next_at = trio.current_time()
            while True:
                nursery.start_soon(change, rng.choice(ops))
                next_at += interval
                await trio.sleep_until(next_at)
    return stats
