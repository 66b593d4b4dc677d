"""Lifecycle convergence (SPEC section 2) with a subscriber that keeps its table across reconnects
exactly as Falco's k8smeta plugin does, against real collector processes behind a TCP proxy:

1. the connection is cut and the address refused while pods are deleted, created, relabelled
   and a Service selector changes (on one hand-built node, plus random churn over a generated
   cluster's nodes); then the same collector again;
2. replica A is killed with SIGKILL, the same changes happen, then replica B (running all along
   against the same API server) answers behind the same address.

After each, every kept table equals view(node) from a fresh list, byte for byte; what it held
stale before reconnecting was erased by the departure log's Deletes (counted by the client and
by the collector's metric).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from metacollector.emulator.churn import run_churn
from metacollector.subscriptions import selected_kinds
from metacollector.testing import collector_command, free_port, wait_ready
from tests.support.cluster import Cluster, workload
from tests.support.env import REAL_KUBECONFIG
from tests.support.grpc_watch import FALCO_KINDS, GrpcWatch
from tests.support.k8smeta_client import K8smetaClient

pytestmark = pytest.mark.skipif(
    bool(REAL_KUBECONFIG), reason="runs collector processes against the emulator"
)

NS, NODE, OTHER = "lifecycle", "node-a", "node-b"
GENERATED_NODES = ("node-0", "node-1", "node-2")  # the emulator's generated cluster, churned


# --- a TCP proxy the test can cut, refuse and point elsewhere ------------------------------------
@dataclass
class Proxy:
    target: int
    port: int = 0
    accepted: int = 0  # connections accepted (and forwarded)
    cut: int = 0  # live connections closed by ``refuse``
    _conns: set[trio.CancelScope] = field(default_factory=set)
    _listening: trio.CancelScope | None = None
    _closed: trio.Event = field(default_factory=trio.Event)

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._listening, self._closed = trio.CancelScope(), trio.Event()
        nursery.start_soon(self._accept, listeners[0], self._listening, self._closed)

    async def _accept(
        self, listener: trio.SocketListener, scope: trio.CancelScope, closed: trio.Event
    ) -> None:
        try:
            with scope:
                async with listener:
                    while True:
                        client = await listener.accept()
                        self.accepted += 1
                        self._nursery.start_soon(self._forward, client, self.target)
        finally:
            closed.set()

    async def _forward(self, client: trio.SocketStream, target: int) -> None:
        scope = trio.CancelScope()
        self._conns.add(scope)
        try:
            with scope:
                async with client:
                    upstream = await trio.open_tcp_stream("127.0.0.1", target)
                    async with upstream, trio.open_nursery() as pumps:
                        pumps.start_soon(_pump, client, upstream, pumps.cancel_scope)
                        pumps.start_soon(_pump, upstream, client, pumps.cancel_scope)
        except OSError:
            pass  # nothing listens at the target (a killed replica): the client sees EOF
        finally:
            self._conns.discard(scope)

    async def refuse(self) -> None:
        """Close the listening port (connects are refused) and cut every live connection."""
        assert self._listening is not None
        self._listening.cancel()
        await self._closed.wait()
        for scope in list(self._conns):
            scope.cancel()
            self.cut += 1

    async def resume(self, target: int | None = None) -> None:
        """Listen on the same port again, forwarding to ``target`` (default: as before)."""
        if target is not None:
            self.target = target
        await self.start(self._nursery)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        async for data in src:
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()


# --- collector processes ---------------------------------------------------------------------------
class Replica:
    """`metacollector run` as a process, its log in a file (a pipe nobody reads could fill)."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.grpc, self.metrics, self.health = free_port(), free_port(), free_port()
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                collector_command(
                    kubeconfig, self.grpc, self.metrics, self.health, "--departure-window", "600"
                ),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def ready(self, timeout: float = 30) -> None:
        def alive() -> None:
            assert self.proc.poll() is None, self.log.read_text()

        await wait_ready(f"http://127.0.0.1:{self.health}/readyz", timeout, alive)

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.metrics}/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + " ", name + "{"))
        )

    async def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return await trio.to_thread.run_sync(self.proc.wait)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- the cluster and its changes ---------------------------------------------------------------------
@dataclass
class Lifecycle:
    cluster: Cluster
    kubeconfig: Path
    tmp: Path
    replicas: list[Replica] = field(default_factory=list)
    uids: dict[str, str] = field(default_factory=dict)

    def replica(self, name: str) -> Replica:
        r = Replica(self.kubeconfig, self.tmp / f"{name}.log")
        self.replicas.append(r)
        return r

    async def build(self) -> None:
        """On NODE: a Deployment's pod (its other replica on OTHER), a bare pod, an RC's pod;
        a Service selecting each."""
        c, o = self.cluster, self.uids
        o["ns"] = (await c.namespace(NS))["metadata"]["uid"]
        deploy = await c.create("Deployment", NS, workload("Deployment", "web", {"app": "web"}, 2))
        rs_body = workload("ReplicaSet", "web-1", {"app": "web"}, 2)
        rs_body["metadata"]["ownerReferences"] = [_owner(deploy)]
        rs = await c.create("ReplicaSet", NS, rs_body)
        rc = await c.create(
            "ReplicationController", NS, workload("ReplicationController", "legacy", {"app": "rc"})
        )
        o["deploy"], o["rs"] = deploy["metadata"]["uid"], rs["metadata"]["uid"]
        for name, app in (("web", "web"), ("solo", "solo"), ("legacy", "rc")):
            o[f"svc_{name}"] = (await c.service(NS, name, {"app": app}))["metadata"]["uid"]
        o["web0"] = (await c.pod(NS, "web-0", NODE, {"app": "web"}, rs))["metadata"]["uid"]
        await c.pod(NS, "web-1", OTHER, {"app": "web"}, rs)
        await c.pod(NS, "solo", NODE, {"app": "solo"})
        await c.pod(NS, "legacy-1", NODE, {"app": "rc"}, rc)

    async def change(self) -> set[str]:
        """Delete, create, relabel, change a selector; churn the generated nodes; return what
        left NODE's view."""
        c = self.cluster
        await c.delete("Pod", NS, "web-0")  # takes its ReplicaSet, Deployment, Service along
        await c.pod(NS, "new-1", NODE, {"app": "new"})
        await c.patch("Pod", NS, "solo", {"metadata": {"labels": {"app": "moved"}}})
        await c.patch("Service", NS, "legacy", {"spec": {"selector": {"app": "nothing"}}})
        churn = await run_churn(c.client, 40, duration=1.5)
        assert sum(churn.done.values()) >= 30, churn  # the churn happened
        o = self.uids
        return {o[k] for k in ("web0", "rs", "deploy", "svc_web", "svc_solo", "svc_legacy")}

    def plugins(self, target: str) -> list[K8smetaClient]:
        return [K8smetaClient(target, node).start() for node in (NODE, *GENERATED_NODES)]

    async def expected(self, node: str) -> dict[str, bytes]:
        view = await self.cluster.expected_view(node, selected_kinds(FALCO_KINDS))
        return {uid: ev.SerializeToString(deterministic=True) for uid, ev in view.items()}

    async def converged(self, clients: list[K8smetaClient], timeout: float = 20) -> None:
        """Every kept table equals view(node) from a fresh list, byte for byte."""
        for client in clients:
            expected = await self.expected(client.node)
            with trio.move_on_after(timeout):
                while client.snapshot() != expected:
                    await trio.sleep(0.05)
            got = client.snapshot()
            assert set(got) == set(expected), (
                f"{client.node}: extra {set(got) - set(expected)}, "
                f"missing {set(expected) - set(got)}"
            )
            assert got == expected, client.node

    def report(self, case: str, clients: list[K8smetaClient], deletes: float) -> None:
        """One line per case (``pytest -s``): streams, refused or cut, Deletes received."""
        rows = [
            c.count(lambda c: (c.node, c.streams, len(c.failures), len(c.deletes))) for c in clients
        ]
        print(
            f"\n{case}: (node, streams, failures, Deletes) {rows}; departure Deletes {deletes:.0f}"
        )

    async def control(self, replica: Replica) -> None:
        """A fresh subscriber straight to ``replica`` converges: it has seen every change."""
        w = GrpcWatch(f"127.0.0.1:{replica.grpc}", NODE).start()
        expected = await self.cluster.expected_view(NODE, selected_kinds(FALCO_KINDS))
        try:
            await w.wait_for(lambda w: w.current == expected, 20)
        finally:
            w.close()


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    from tests.support.cluster import owner_ref

    return owner_ref(obj)


@pytest.fixture
async def lifecycle(tmp_path: Path) -> AsyncIterator[Lifecycle]:
    from metacollector.emulator.inprocess import running_emulator

    async with (
        running_emulator(nodes=len(GENERATED_NODES), pods_per_node=6, bookmark_interval=0.5) as emu,
        emu.client() as client,
    ):
        lc = Lifecycle(Cluster(client), emu.kubeconfig, tmp_path)
        await lc.build()
        try:
            yield lc
        finally:
            for r in lc.replicas:
                r.stop()


async def test_cut_and_refused_then_the_same_collector(
    lifecycle: Lifecycle, nursery: trio.Nursery
) -> None:
    lc = lifecycle
    a = lc.replica("a")
    await a.ready()
    proxy = Proxy(a.grpc)
    await proxy.start(nursery)
    plugins = lc.plugins(f"127.0.0.1:{proxy.port}")
    plugin = plugins[0]  # NODE's
    try:
        await lc.converged(plugins)
        accepted = proxy.accepted
        await proxy.refuse()
        # the fault fired: the live streams were cut, and reconnects were refused (not accepted)
        for p in plugins:
            await p.wait_for(lambda p: len(p.failures) >= 2, 10)
        assert proxy.cut >= len(plugins) and proxy.accepted == accepted
        stale = await lc.change()
        await lc.control(a)
        assert stale <= set(plugin.snapshot())  # the kept table still holds what left
        await proxy.resume()
        await lc.converged(plugins)
        assert proxy.accepted > accepted and plugin.count(lambda p: p.streams) >= 2
        assert stale <= set(plugin.count(lambda p: list(p.deletes)))  # erased by Deletes
        sent = await a.metric("metacollector_departure_deletes_total")
        assert sent >= len(stale) and a.proc.poll() is None
        lc.report("cut+refused, same replica", plugins, sent)
    finally:
        for p in plugins:
            p.close()


async def test_sigkill_then_another_replica_behind_the_same_address(
    lifecycle: Lifecycle, nursery: trio.Nursery
) -> None:
    lc = lifecycle
    a, b = lc.replica("a"), lc.replica("b")
    await a.ready()
    await b.ready()
    proxy = Proxy(a.grpc)
    await proxy.start(nursery)
    plugins = lc.plugins(f"127.0.0.1:{proxy.port}")
    plugin = plugins[0]  # NODE's
    try:
        await lc.converged(plugins)
        assert await a.kill() == -signal.SIGKILL  # the fault fired
        await proxy.refuse()  # no replica behind the address while the cluster changes
        for p in plugins:
            await p.wait_for(lambda p: len(p.failures) >= 2, 10)
        stale = await lc.change()
        await lc.control(b)
        assert stale <= set(plugin.snapshot())
        before = await b.metric("metacollector_departure_deletes_total")
        await proxy.resume(target=b.grpc)
        await lc.converged(plugins)
        assert stale <= set(plugin.count(lambda p: list(p.deletes)))
        sent = await b.metric("metacollector_departure_deletes_total") - before
        assert sent >= len(stale)
        lc.report("SIGKILL, other replica", plugins, sent)
    finally:
        for p in plugins:
            p.close()
