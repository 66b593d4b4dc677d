"""Two collector processes with --leader-elect and one CloudEvents receiver, on the emulator:
steady churn delivered once; the leader SIGKILLed mid-churn (nothing lost, duplicates only from
the takeover window, with the first delivery's id); a restarted replica announces nothing that
already existed; a full outage then a single replica: what changed meanwhile arrives as updated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from metacollector.emulator.churn import run_churn
from metacollector.emulator.inprocess import EmulatorHandle, running_emulator
from metacollector.testing import free_port
from metacollector.testing.receiver import Receiver, data_of, start_receiver
from tests.support.cluster import Cluster
from tests.support.env import REAL_KUBECONFIG

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(REAL_KUBECONFIG), reason="uses the emulator's synthetic cluster"),
]

RETRY = 0.5  # short election timings keep the test short; the ratios are client-go's
ELECTION = [
    "--leader-elect",
    "--leader-election-namespace=kube-system",
    "--leader-elect-lease-duration=3",
    "--leader-elect-renew-deadline=2",
    f"--leader-elect-retry-period={RETRY}",
]


STARTED: list[Replica] = []


class Replica:
    """`metacollector run` as a process; its log goes to a file (a pipe could fill and block)."""

    def __init__(self, emu: EmulatorHandle, sink: str, logdir: Path, name: str) -> None:
        STARTED.append(self)
        self.name = name
        self.metrics, self.health = free_port(), free_port()
        self.log = logdir / f"{name}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "metacollector.cli",
                    "run",
                    f"--kubeconfig={emu.kubeconfig}",
                    f"--broker-bind-address=127.0.0.1:{free_port()}",
                    f"--metrics-bind-address=127.0.0.1:{self.metrics}",
                    f"--health-probe-bind-address=127.0.0.1:{self.health}",
                    f"--cloudevents-sink={sink}",
                    *ELECTION,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def get(self, port: int, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{port}{path}")

    async def ready(self) -> None:
        with trio.fail_after(30):
            while True:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    if (await self.get(self.health, "/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)

    async def leading(self) -> bool:
        text = (await self.get(self.metrics, "/metrics")).text
        return "metacollector_leader_election_is_leader 1.0" in text

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no flush, no release
        self.proc.wait(10)

    async def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        rc = await trio.to_thread.run_sync(lambda: self.proc.wait(20))
        assert rc == 0, self.log.read_text()[-3000:]


def pods(emu: EmulatorHandle) -> dict[str, tuple[int, dict[str, str]]]:
    """uid -> (resourceVersion, labels) of every pod in the emulator now."""
    return {
        s.obj["metadata"]["uid"]: (s.rv, s.obj["metadata"].get("labels") or {})
        for s in emu.emulator.store.items("pods")
    }


def missing(
    receiver: Receiver,
    before: dict[str, tuple[int, dict[str, str]]],
    after: dict[str, tuple[int, dict[str, str]]],
    since_rv: int,
) -> list[str]:
    """Pod changes since ``since_rv`` whose final state the receiver does not have."""
    wrong = [uid for uid in before.keys() - after.keys() if receiver.final.get(uid) != "deleted"]
    for uid, (rv, labels) in after.items():
        if rv > since_rv:
            got = receiver.final.get(uid)
            if not isinstance(got, dict) or (got["meta"].get("labels") or {}) != labels:
                wrong.append(uid)
    return wrong


async def converged(
    receiver: Receiver, emu: EmulatorHandle, before: dict[str, Any], since_rv: int
) -> None:
    with trio.fail_after(40):
        while missing(receiver, before, pods(emu), since_rv):
            await trio.sleep(0.1)


async def leader_of(replicas: list[Replica], timeout: float = 20) -> Replica:
    with trio.fail_after(timeout):
        while True:
            for r in replicas:
                if r.proc.poll() is None and await r.leading():
                    return r
            await trio.sleep(0.1)


def kind_of(event: Any) -> str:
    return str(event.get_type().split(".")[-2])


async def test_two_replicas_churn_sigkill_restart_and_full_outage(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    try:
        await scenario(nursery, tmp_path)
    except BaseException:
        for r in STARTED:
            print(f"--- {r.name}", r.log.read_text()[-4000:] if r.log.exists() else "")
        raise
    finally:
        for r in STARTED:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        STARTED.clear()


async def scenario(nursery: trio.Nursery, logdir: Path) -> None:
    receiver = await start_receiver(nursery)
    counts: dict[str, object] = {}
    async with running_emulator(nodes=3, pods_per_node=10, seed=5) as emu:
        if True:
            a = Replica(emu, receiver.url, logdir, "a")
            await a.ready()
            b = Replica(emu, receiver.url, logdir, "b")
            await b.ready()
            leader = await leader_of([a, b])
            follower = b if leader is a else a
            await trio.sleep(4 * RETRY)
            assert receiver.events == []  # start: nothing that existed is announced
            existing = set(pods(emu))
            counts["objects_at_start"] = len(existing)

            # --- steady state: every change delivered once --------------------------------
            before, rv0 = pods(emu), emu.emulator.store.rv
            async with emu.client() as client:
                churn = await run_churn(client, rate=25, duration=4, seed=11)
            await converged(receiver, emu, before, rv0)
            ids = Counter(e.get_id() for e in receiver.events)
            twice = [i for i, n in ids.items() if n > 1]
            assert twice == [], [
                (e.get_type(), data_of(e)) for e in receiver.events if e.get_id() in twice
            ]
            assert not await follower.leading()
            counts["steady_changes"] = sum(churn.done.values())
            counts["steady_events"] = len(receiver.events)

            # --- the leader SIGKILLed mid-churn -------------------------------------------
            before, rv0 = pods(emu), emu.emulator.store.rv
            seen = len(receiver.events)

            async def churn_on() -> None:
                async with emu.client() as client:
                    counts["failover_changes"] = sum(
                        (await run_churn(client, rate=25, duration=8, seed=12)).done.values()
                    )

            async with trio.open_nursery() as churning:
                churning.start_soon(churn_on)
                await trio.sleep(2)
                killed_at = trio.current_time()
                leader.kill()
                assert await leader_of([follower]) is follower
                counts["takeover_seconds"] = round(trio.current_time() - killed_at, 2)
            await converged(receiver, emu, before, rv0)  # nothing lost
            await trio.sleep(1)
            events = receiver.events[seen:]
            times = receiver.times[seen:]
            first: dict[str, float] = {}
            duplicates = []
            for event, at in zip(events, times, strict=True):
                if event.get_id() in first:
                    duplicates.append((first[event.get_id()], at))
                else:
                    first[event.get_id()] = at
            window = 2 * RETRY + 0.5  # last watermark written at most one retry period before
            assert all(killed_at - window <= t1 <= killed_at < t2 for t1, t2 in duplicates), (
                killed_at,
                duplicates,
            )
            # one id -> one object state, whoever sent it (one state may have several ids: a
            # pod relabelled back to earlier labels is a new object version with the old content)
            states: dict[str, set[str]] = {}
            for e in events:
                data = data_of(e)
                state = json.dumps([data["uid"], data["meta"], data["status"], data["refs"]])
                states.setdefault(e.get_id(), set()).add(state)
            assert all(len(contents) == 1 for contents in states.values())
            counts["failover_events"] = len(events)
            counts["failover_duplicates"] = len(duplicates)

            # --- the killed replica restarted: announces nothing that existed -------------
            c = Replica(emu, receiver.url, logdir, "c")
            await c.ready()
            seen = len(receiver.events)
            await follower.terminate()  # releases the Lease: c takes over at once
            assert await leader_of([c], timeout=10) is c
            async with emu.client() as client:
                control = await Cluster(client).pod("team-0", "after-takeover", "node-1", {})
            uid = control["metadata"]["uid"]
            with trio.fail_after(10):
                while uid not in receiver.final:
                    await trio.sleep(0.05)
            await trio.sleep(1)
            assert [(data_of(e)["uid"], kind_of(e)) for e in receiver.events[seen:]] == [
                (uid, "created")
            ]

            # --- full outage, then a single replica ---------------------------------------
            await c.terminate()  # releases with its final watermark
            async with emu.client() as client:
                cluster = Cluster(client)
                old = next(
                    s.obj["metadata"]
                    for s in emu.emulator.store.items("pods")
                    if s.obj["metadata"]["namespace"] != "kube-system"
                    and s.obj["metadata"]["uid"] != uid
                )
                await cluster.patch(
                    "Pod", old["namespace"], old["name"], {"metadata": {"labels": {"gap": "1"}}}
                )
                born = await cluster.pod("team-0", "born-in-gap", "node-2", {})
                await cluster.delete("Pod", "team-0", "after-takeover")
            seen = len(receiver.events)
            d = Replica(emu, receiver.url, logdir, "d")
            await d.ready()
            await leader_of([d])
            with trio.move_on_after(10):
                while len(receiver.events) < seen + 2:
                    await trio.sleep(0.05)
            await trio.sleep(1)
            got = sorted((data_of(e)["uid"], kind_of(e)) for e in receiver.events[seen:])
            assert got == sorted([(old["uid"], "updated"), (born["metadata"]["uid"], "updated")]), (
                got,
                old,
                born["metadata"],
            )  # the deletion during the outage is the known loss
            counts["restart_events"] = len(got)
            counts["events_total"] = len(receiver.events)
            created = [data_of(e)["uid"] for e in receiver.events if kind_of(e) == "created"]
            assert not existing & set(created)
            await d.terminate()
    print("\nCOUNTS", json.dumps(counts))
