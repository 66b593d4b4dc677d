"""Churn: a stream of cluster changes for the demo, the tests and the benchmarks.

One ``ChurnPlanner`` decides every change: the op mix (pod relabel, create, delete, reschedule,
deployment scale), which pod or deployment, the new pod's node and name. Two drivers carry its
plans out: ``run_churn`` through REST (any API server), ``run_store_churn`` straight into an
in-process emulator store, to measure watch serving apart from REST write capacity.

With ``stamp_label`` (the benchmarks ask for ``bench-stamp``), every created or relabelled pod
is stamped with the wall-clock time in ns when the change is made, so a subscriber can measure
commit-to-receipt latency. Without it (the demo) a relabel sets a ``version`` label and nothing
else is added.
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
BENCH_STAMP = "bench-stamp"  # the label the benchmarks stamp and look for
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
Key = tuple[str, str]  # (namespace, name)


@dataclass
class ChurnStats:
    done: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    finished: bool = False  # the churn's duration is over

    def count(self, op: str) -> None:
        self.done[op] = self.done.get(op, 0) + 1


@dataclass(frozen=True, slots=True)
class Change:
    """One planned change. ``target`` is the pod relabelled, deleted, rescheduled (deleted and
    made again from itself) or used as the template of a new one, or the deployment scaled."""

    op: str
    target: Key
    node: str = ""  # create, reschedule: the new pod's node
    suffix: str = ""  # create, reschedule: appended to the template's generateName
    version: str = ""  # relabel without a stamp: the version label's new value
    replicas: int = 0  # scale


class ChurnPlanner:
    """The change mix, shared by both drivers. Holds the keys of the pods it may change (those
    with an owner, outside kube-system); a driver reports each pod it made with ``created`` and
    each change it finished with ``finished``: a pod being relabelled is not deleted under the
    relabel's feet (a 404 counted as a failed change), however many changes are in flight."""

    def __init__(
        self,
        pods: list[Key],
        nodes: list[str],
        deployments: list[Key],
        *,
        seed: int,
        stamp_label: str | None,
    ) -> None:
        self.rng = random.Random(seed)
        self.pods = pods
        self.nodes = nodes or ["node-0"]
        self.deployments = deployments
        self.stamp_label = stamp_label
        self.relabelling: set[Key] = set()  # pods with a relabel in flight

    @staticmethod
    def changeable(key: Key, obj: Obj) -> bool:
        return bool(obj["metadata"].get("ownerReferences")) and key[0] != "kube-system"

    def next(self) -> tuple[str, Change | None]:
        """The next op of the mix, and the change it makes (None when it has nothing to act on
        now, e.g. delete with a single pod left)."""
        rng, pods = self.rng, self.pods
        op = rng.choice(OPS)
        if op == "relabel" and pods:
            target = rng.choice(pods)
            self.relabelling.add(target)
            return op, Change(op, target, version=f"v{rng.randint(1, 9)}")
        if op in ("create", "reschedule") and pods:
            target = self._take() if op == "reschedule" else rng.choice(pods)
            return op, Change(op, target, node=rng.choice(self.nodes), suffix=self._suffix())
        if op == "delete" and len(pods) > 1:
            return op, Change(op, self._take())
        if op == "scale" and self.deployments:
            return op, Change(op, rng.choice(self.deployments), replicas=rng.randint(1, 9))
        return op, None

    def created(self, key: Key) -> None:
        self.pods.append(key)

    def finished(self, change: Change) -> None:
        """The driver is done with ``change`` (made or failed)."""
        if change.op == "relabel":
            self.relabelling.discard(change.target)

    def relabel(self, change: Change) -> dict[str, str]:
        """The labels a relabel sets, taken when it is made."""
        if self.stamp_label:
            return {self.stamp_label: str(time.time_ns())}
        return {"version": change.version}

    def new_pod(self, template: Obj, change: Change) -> Obj:
        """A pod made from ``template`` (a stored pod) for a create or reschedule; shares the
        template's unchanged subtrees."""
        meta = {
            k: v
            for k, v in template["metadata"].items()
            if k not in ("uid", "resourceVersion", "creationTimestamp")
        }
        meta["name"] = f"{meta.get('generateName') or 'churn-'}{change.suffix}"
        if self.stamp_label:
            meta["labels"] = {**meta.get("labels", {}), self.stamp_label: str(time.time_ns())}
        return {**template, "metadata": meta, "spec": {**template["spec"], "nodeName": change.node}}

    def _take(self) -> Key:
        """Remove a random pod from the plan in O(1) (order does not matter), skipping pods
        with a relabel in flight (at most the drivers' concurrency of them)."""
        pods = self.pods
        index = self.rng.randrange(len(pods))
        for _ in range(len(pods)):
            if pods[index] not in self.relabelling:
                break
            index = (index + 1) % len(pods)
        pods[index], pods[-1] = pods[-1], pods[index]
        return pods.pop()

    def _suffix(self) -> str:
        return f"{self.rng.getrandbits(40):010x}"


def _key(obj: Obj) -> Key:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


# --- REST driver -------------------------------------------------------------------------------
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


def _pod_path(key: Key) -> str:
    return f"/api/v1/namespaces/{key[0]}/pods/{key[1]}"


async def run_churn(
    client: ChurnClient,
    rate: float,
    *,
    duration: float | None = None,
    seed: int = 7,
    stamp_label: str | None = None,
    stats: ChurnStats | None = None,
    concurrency: int = 32,
) -> ChurnStats:
    """Perform ``rate`` changes per second through REST (for ``duration`` s, or until
    cancelled), at most ``concurrency`` in flight."""
    stats = stats or ChurnStats()
    known = {_key(p): p for p in await _list(client, "/api/v1/pods")}  # templates by key
    known = {k: p for k, p in known.items() if ChurnPlanner.changeable(k, p)}
    nodes = [n["metadata"]["name"] for n in await _list(client, "/api/v1/nodes")]
    deployments = [_key(d) for d in await _list(client, "/apis/apps/v1/deployments")]
    planner = ChurnPlanner(list(known), nodes, deployments, seed=seed, stamp_label=stamp_label)

    async def make(change: Change) -> None:
        op, target = change.op, change.target
        if op == "relabel":
            labels = planner.relabel(change)
            r = await client.patch(
                _pod_path(target), json={"metadata": {"labels": labels}}, headers=MERGE
            )
        elif op in ("create", "reschedule"):
            template = known.pop(target) if op == "reschedule" else known[target]
            if op == "reschedule":
                (await client.delete(_pod_path(target))).raise_for_status()
            new = planner.new_pod(template, change)
            r = await client.post(
                f"/api/v1/namespaces/{target[0]}/pods", content=_encode(new), headers=JSON
            )
            r.raise_for_status()
            made = _decode(r.content)
            known[_key(made)] = made
            planner.created(_key(made))
        elif op == "delete":
            known.pop(target, None)
            r = await client.delete(_pod_path(target))
        else:  # scale
            r = await client.patch(
                f"/apis/apps/v1/namespaces/{target[0]}/deployments/{target[1]}",
                json={"spec": {"replicas": change.replicas}},
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
            op, change = planner.next()
            try:
                if change is not None:
                    await make(change)
                stats.count(op)
            except (httpx.HTTPError, KeyError, IndexError) as exc:
                stats.failed += 1
                log.debug("churn op failed", extra={"op": op, "error": str(exc)})
            finally:
                if change is not None:
                    planner.finished(change)

    with trio.move_on_after(duration if duration is not None else float("inf")):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    stats.finished = True
    return stats


# --- store driver ------------------------------------------------------------------------------
async def run_store_churn(
    store: Store,
    rate: float,
    *,
    duration: float | None = None,
    seed: int = 7,
    stamp_label: str | None = None,
    stats: ChurnStats | None = None,
    tick: float = 0.005,
) -> ChurnStats:
    """The same changes as ``run_churn``, committed straight to ``store`` (no HTTP) at ``rate``
    changes per second. Every ``tick`` s it makes the changes that are due, but at most 0.1 s
    worth at once: an overloaded emulator shows a lower achieved rate rather than bursts that
    starve its watchers."""
    stats = stats or ChurnStats()
    pods = [key for key, s in store.objects["pods"].items() if ChurnPlanner.changeable(key, s.obj)]
    nodes = [key[1] for key in store.objects["nodes"]]
    planner = ChurnPlanner(
        pods, nodes, list(store.objects["deployments"]), seed=seed, stamp_label=stamp_label
    )

    def create_from(template: Obj, change: Change) -> None:
        made = store.create("pods", planner.new_pod(template, change)).obj
        planner.created(_key(made))

    def make(change: Change) -> None:
        op, target = change.op, change.target
        if op == "relabel":
            old = store.get("pods", *target).obj
            labels = {**old["metadata"].get("labels", {}), **planner.relabel(change)}
            meta = {**old["metadata"], "labels": labels, "resourceVersion": ""}
            store.update("pods", {**old, "metadata": meta})
        elif op == "create":
            create_from(store.get("pods", *target).obj, change)
        elif op == "reschedule":
            create_from(store.delete("pods", *target).obj, change)
        elif op == "delete":
            store.delete("pods", *target)
        else:  # scale
            old = store.get("deployments", *target).obj
            meta = {**old["metadata"], "resourceVersion": ""}
            spec = {**old["spec"], "replicas": change.replicas}
            store.update("deployments", {**old, "metadata": meta, "spec": spec})

    start = trio.current_time()
    done = 0
    burst = max(1, round(rate * 0.1))
    with trio.move_on_after(duration if duration is not None else float("inf")):
        while True:
            due = int((trio.current_time() - start) * rate)
            for _ in range(min(due - done, burst)):  # slots beyond that are dropped
                op, change = planner.next()
                try:
                    if change is not None:
                        make(change)
                    stats.count(op)
                except (NotFound, Conflict, AlreadyExists, KeyError, IndexError):
                    stats.failed += 1
                finally:
                    if change is not None:
                        planner.finished(change)
            done = due
            await trio.sleep(tick)
    stats.finished = True
    return stats
