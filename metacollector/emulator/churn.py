"""Churn drivers: pod create/delete/relabel/reschedule and deployment scale.

``run_churn`` makes the changes through REST (any API server); ``run_store_churn`` commits the
same mix straight to an in-process emulator store, to measure watch serving apart from REST
write capacity. Every change that creates or relabels a pod stamps ``stamp_label`` with the
wall-clock time in ns, so a subscriber can measure commit-to-receipt latency.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import msgspec
import trio

from metacollector.emulator.store import AlreadyExists, Conflict, NotFound, Obj, Store

log = logging.getLogger("metacollector.emulator.churn")
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON = {"Content-Type": "application/json"}
OPS = ["relabel"] * 50 + ["create"] * 15 + ["delete"] * 15 + ["reschedule"] * 15 + ["scale"] * 5
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


@dataclass
class ChurnStats:
    done: dict[str, int] = field(default_factory=dict)
    failed: int = 0

    def count(self, op: str) -> None:
        self.done[op] = self.done.get(op, 0) + 1


class ChurnResponse(Protocol):
    """What run_churn reads of a response (httpx.Response has it)."""

    @property
    def content(self) -> bytes: ...

    def raise_for_status(self) -> object:
        """Raise an ``httpx.HTTPError`` for a 4xx/5xx status."""


class ChurnClient(Protocol):
    """The part of ``httpx.AsyncClient`` run_churn uses, so a bench can pass a leaner client
    that raises ``httpx.HTTPError`` for failures."""

    async def get(self, url: str, *, params: dict[str, Any] | None = None) -> ChurnResponse: ...

    async def post(
        self, url: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> ChurnResponse: ...

    async def patch(
        self, url: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> ChurnResponse: ...

    async def delete(self, url: str) -> ChurnResponse: ...


async def _list(client: ChurnClient, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cont = ""
    while True:
        r = await client.get(path, params={"limit": 500, **({"continue": cont} if cont else {})})
        r.raise_for_status()
        body = _decode(r.content)
        items += body["items"]
        cont = body["metadata"].get("continue", "")
        if not cont:
            return items


async def run_churn(
    client: ChurnClient,
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

    def take(index: int) -> dict[str, Any]:
        """Remove pods[index] in O(1) (order does not matter)."""
        pods[index], pods[-1] = pods[-1], pods[index]
        return pods.pop()

    async def change(op: str) -> None:
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
            new = _decode(_encode(template))  # a deep copy, ~10x cheaper than copy.deepcopy
            meta = new["metadata"]
            for key in ("uid", "resourceVersion", "creationTimestamp"):
                meta.pop(key, None)
            meta["name"] = f"{meta.get('generateName') or 'churn-'}{rng.getrandbits(40):010x}"
            meta.setdefault("labels", {})[stamp_label] = stamp
            new["spec"]["nodeName"] = rng.choice(nodes)
            r = await client.post(
                f"/api/v1/namespaces/{meta['namespace']}/pods", content=_encode(new), headers=JSON
            )
            r.raise_for_status()
            pods.append(_decode(r.content))
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

    interval = 1.0 / rate
    next_at = trio.current_time()

    async def worker() -> None:
        """Take the next slot of the schedule, wait for it, change; at most ``concurrency``
        changes are in flight, and a driver that fell behind catches up at that width."""
        nonlocal next_at
        while True:
            at, next_at = next_at, next_at + interval
            await trio.sleep_until(at)
            await change(rng.choice(OPS))

    with trio.move_on_after(duration if duration is not None else float("inf")):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return stats


async def run_store_churn(
    store: Store,
    rate: float,
    *,
    duration: float | None = None,
    seed: int = 7,
    stamp_label: str = "bench-stamp",
    stats: ChurnStats | None = None,
    tick: float = 0.005,
) -> ChurnStats:
    """The same change mix as ``run_churn``, committed straight to ``store`` (no HTTP) at
    ``rate`` changes per second. Every ``tick`` s it makes the changes that are due, but at most
    0.1 s worth at once: an overloaded emulator shows a lower achieved rate rather than bursts
    that starve its watchers."""
    rng = random.Random(seed)
    stats = stats or ChurnStats()
    pods = [
        key
        for key, s in store.objects["pods"].items()
        if s.obj["metadata"].get("ownerReferences") and key[0] != "kube-system"
    ]
    nodes = [key[1] for key in store.objects["nodes"]] or ["node-0"]
    deployments = list(store.objects["deployments"])

    def take(index: int) -> tuple[str, str]:
        pods[index], pods[-1] = pods[-1], pods[index]
        return pods.pop()

    def create_from(template: Obj, stamp: str) -> None:
        meta = {
            k: v
            for k, v in template["metadata"].items()
            if k not in ("uid", "resourceVersion", "creationTimestamp")
        }
        meta["name"] = f"{meta.get('generateName') or 'churn-'}{rng.getrandbits(40):010x}"
        meta["labels"] = {**meta.get("labels", {}), stamp_label: stamp}
        new = {**template, "metadata": meta, "spec": {**template["spec"]}}
        new["spec"]["nodeName"] = rng.choice(nodes)
        store.create("pods", new)
        pods.append((meta["namespace"], meta["name"]))

    def change(op: str) -> None:
        stamp = str(time.time_ns())
        if op == "relabel" and pods:
            old = store.get("pods", *rng.choice(pods)).obj
            labels = {**old["metadata"].get("labels", {}), stamp_label: stamp}
            meta = {**old["metadata"], "labels": labels, "resourceVersion": ""}
            store.update("pods", {**old, "metadata": meta})
        elif op == "create" and pods:
            create_from(store.get("pods", *rng.choice(pods)).obj, stamp)
        elif op == "reschedule" and pods:
            old = store.delete("pods", *take(rng.randrange(len(pods)))).obj
            create_from(old, stamp)
        elif op == "delete" and len(pods) > 1:
            store.delete("pods", *take(rng.randrange(len(pods))))
        elif op == "scale" and deployments:
            old = store.get("deployments", *rng.choice(deployments)).obj
            meta = {**old["metadata"], "resourceVersion": ""}
            spec = {**old["spec"], "replicas": rng.randint(1, 9)}
            store.update("deployments", {**old, "metadata": meta, "spec": spec})

    start = trio.current_time()
    done = 0
    burst = max(1, round(rate * 0.1))
    with trio.move_on_after(duration if duration is not None else float("inf")):
        while True:
            due = int((trio.current_time() - start) * rate)
            for _ in range(min(due - done, burst)):  # slots beyond that are dropped
                op = rng.choice(OPS)
                try:
                    change(op)
                    stats.count(op)
                except (NotFound, Conflict, AlreadyExists, KeyError, IndexError):
                    stats.failed += 1
            done = due
            await trio.sleep(tick)
    return stats
