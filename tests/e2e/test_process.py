"""`metacollector run` as a real process: 100 streams on one connection, SIGTERM, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import trio

from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import selected_kinds
from tests.e2e.cluster import Cluster
from tests.e2e.conftest import REAL_KUBECONFIG
from tests.e2e.grpc_watch import FALCO_KINDS, GrpcWatch

pytestmark = pytest.mark.skipif(
    bool(REAL_KUBECONFIG), reason="uses the emulator's synthetic cluster"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collector:
    def __init__(self, kubeconfig: Path, *extra: str) -> None:
        self.grpc, self.metrics, self.health = free_port(), free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metacollector.cli",
                "run",
                "--kubeconfig",
                str(kubeconfig),
                "--broker-bind-address",
                f"127.0.0.1:{self.grpc}",
                "--metrics-bind-address",
                f"127.0.0.1:{self.metrics}",
                "--health-probe-bind-address",
                f"127.0.0.1:{self.health}",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def ready(self, timeout: float = 30) -> None:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(timeout):
                while True:
                    assert self.proc.poll() is None, self.proc.communicate()[1]
                    try:
                        if (
                            await client.get(f"http://127.0.0.1:{self.health}/readyz")
                        ).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.metrics}/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    async def terminate(self, timeout: float = 10) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        rc = await trio.to_thread.run_sync(lambda: self.proc.wait(timeout))
        return rc, self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
async def emulator() -> AsyncIterator[object]:
    from metacollector.emulator.harness import running_emulator

    async with running_emulator(nodes=4, pods_per_node=30, seed=3) as emu:
        yield emu


async def test_hundred_streams_one_connection_then_sigterm(emulator) -> None:  # type: ignore[no-untyped-def]
    collector = Collector(emulator.kubeconfig)
    try:
        await collector.ready()
        channel = grpc.insecure_channel(f"127.0.0.1:{collector.grpc}")
        # one channel = one HTTP/2 connection, 100 streams
        watches = [
            GrpcWatch(f"127.0.0.1:{collector.grpc}", "node-0").start(channel) for _ in range(100)
        ]
        with trio.fail_after(20):
            while await collector.metric("meta_collector_server_subscribers") != 100:
                await trio.sleep(0.1)
        rc, stderr = await collector.terminate()
        assert rc == 0, stderr
        for w in watches:
            assert await w.wait_ended() == grpc.StatusCode.UNAVAILABLE
        assert '"starting grpc server"' in stderr
        channel.close()
    finally:
        if collector.proc.poll() is None:
            collector.proc.kill()


async def test_sigterm_during_initial_sync_of_100_subscribers(emulator) -> None:  # type: ignore[no-untyped-def]
    collector = Collector(emulator.kubeconfig)
    try:
        await collector.ready()
        watches = [
            GrpcWatch(f"127.0.0.1:{collector.grpc}", f"node-{i % 4}").start() for i in range(100)
        ]
        await trio.sleep(0.2)  # streams open, syncs under way
        with trio.fail_after(15):
            rc, stderr = await collector.terminate()
        assert rc == 0, stderr
        for w in watches:
            assert await w.wait_ended() == grpc.StatusCode.UNAVAILABLE
            w.channel.close()
    finally:
        if collector.proc.poll() is None:
            collector.proc.kill()


async def test_startup_error_is_one_line_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "config"
    bad.write_text("apiVersion: v1\nclusters: 5\n")
    proc = await trio.run_process(
        [sys.executable, "-m", "metacollector.cli", "run", "--kubeconfig", str(bad)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1
    assert (
        len(lines) == 1 and lines[0].startswith("metacollector: error: ") and "clusters" in lines[0]
    )


async def test_busy_grpc_port_is_a_clear_startup_error(emulator) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await trio.run_process(
            [
                sys.executable,
                "-m",
                "metacollector.cli",
                "run",
                "--kubeconfig",
                str(emulator.kubeconfig),
                "--broker-bind-address",
                f"127.0.0.1:{port}",
                "--metrics-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1, lines
    assert lines[-1].startswith("metacollector: error: ") and str(port) in lines[-1]


STORM_SERVICES = 5000
STORM_PODS = 10  # every storm Service selects these, all on node-0


@pytest.mark.slow  # ~60 s: 5,000 REST creates through the in-process emulator
async def test_service_storm_keeps_subscribers_probes_and_sigterm_live(emulator) -> None:  # type: ignore[no-untyped-def]
    """Issue 18: 5,000 Services in one namespace selecting the same pods froze the process
    (quadratic reducer, no checkpoint in the hub). Now, while they arrive: a subscriber of
    another node gets every change, /healthz answers within 1 s every time, the subscriber of
    the selected pods' node converges, and SIGTERM exits within 2 s."""
    async with emulator.client() as client:
        cluster = Cluster(client)
        await cluster.namespace("storm")
        for i in range(STORM_PODS):
            await cluster.pod("storm", f"sel-{i}", "node-0", labels={"app": "storm"})
        await cluster.pod("storm", "canary", "node-1", labels={"app": "canary", "rev": "0"})
        collector = Collector(emulator.kubeconfig)
        drainer: subprocess.Popen[str] | None = None
        try:
            await collector.ready()
            target = f"127.0.0.1:{collector.grpc}"
            healthy = GrpcWatch(target, "node-1").start()
            # The selected pods' node gets every Service and a 190 KB Update of each pod per
            # flush: drained raw in its own process (parsing it here would slow the emulator
            # that serves the storm, which runs in this process), checked after the storm.
            drainer = subprocess.Popen(
                [sys.executable, "-c", _DRAIN, target, "node-0"],
                stdout=subprocess.PIPE,
                text=True,
            )
            await healthy.wait_for(lambda w: _canary_rev(w) == "0", 20)
            latencies: list[float] = []
            probes: list[float] = []
            created = [0]

            async def storm() -> None:
                async def worker(start: int) -> None:
                    for i in range(start, STORM_SERVICES, 8):
                        await cluster.service("storm", f"svc-{i:04d}", {"app": "storm"})
                        created[0] += 1

                async with trio.open_nursery() as workers:
                    for start in range(8):
                        workers.start_soon(worker, start)

            async def probe() -> None:
                async with httpx.AsyncClient() as http:
                    while created[0] < STORM_SERVICES:
                        t0 = trio.current_time()
                        with trio.fail_after(1):  # the probe deadline kubelet would apply
                            r = await http.get(f"http://127.0.0.1:{collector.health}/healthz")
                        assert r.status_code == 200
                        probes.append(trio.current_time() - t0)
                        await trio.sleep(0.1)

            async def canary() -> None:
                rev = 0
                while created[0] < STORM_SERVICES:
                    rev += 1
                    labels = {"app": "canary", "rev": str(rev)}
                    await cluster.patch("Pod", "storm", "canary", {"metadata": {"labels": labels}})
                    t0 = trio.current_time()
                    await healthy.wait_for(lambda w, want=str(rev): _canary_rev(w) == want, 10)
                    latencies.append(trio.current_time() - t0)
                    await trio.sleep(0.05)

            cpu0, t_storm = _cpu_seconds(collector.proc.pid), trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(storm)
                nursery.start_soon(probe)
                nursery.start_soon(canary)
            cpu = _cpu_seconds(collector.proc.pid) - cpu0
            storm_s = trio.current_time() - t_storm
            # The storm reached the collector: a new node-0 subscriber's view is the API's (the
            # selected pods carrying all 5,000 Services), and the other stayed healthy.
            expected = await cluster.expected_view("node-0", _FALCO)
            selected = GrpcWatch(target, "node-0").start()
            await selected.wait_for(lambda w: w.current == expected, 120)
            assert all(len(_services(selected, f"sel-{i}")) == STORM_SERVICES for i in range(10))
            assert healthy.error is None and selected.error is None
            assert len(latencies) >= 5 and len(probes) >= 5
            latencies.sort()
            print(
                f"\ncanary change latency over {len(latencies)} changes: p50 "
                f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 "
                f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; /healthz max "
                f"{max(probes) * 1000:.1f} ms over {len(probes)} probes; storm {storm_s:.1f} s, "
                f"collector CPU {cpu:.1f} s; collector send latency (metric, cumulative): "
                f"{await _latency_buckets(collector)}"
            )

            # Deleting them is a storm too; SIGTERM in the middle of it.
            async def unstorm() -> None:
                for i in range(STORM_SERVICES):
                    await cluster.delete("Service", "storm", f"svc-{i:04d}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(unstorm)
                await selected.wait_for(lambda w: len(_services(w, "sel-0")) < 4000, 60)
                t0 = trio.current_time()
                rc, stderr = await collector.terminate(timeout=2)
                assert trio.current_time() - t0 < 2
                nursery.cancel_scope.cancel()
            assert rc == 0, stderr
            end_of_stream = drainer.communicate
            drained = await trio.to_thread.run_sync(lambda: end_of_stream(timeout=10)[0])
            messages, size = map(int, drained.split())
            print(f"node-0 subscriber drained {messages} messages, {size / 2**20:.0f} MiB")
            assert messages >= STORM_SERVICES
            healthy.channel.close()
            selected.channel.close()
        finally:
            if collector.proc.poll() is None:
                collector.proc.kill()
            if drainer is not None and drainer.poll() is None:
                drainer.kill()


# A Watch subscriber that counts messages and bytes without parsing them; prints both at the
# end of the stream.
_DRAIN = """
import sys, grpc
from metacollector.proto import metadata_pb2 as pb
channel = grpc.insecure_channel(sys.argv[1])
watch = channel.unary_stream("/metadata.Metadata/Watch", request_serializer=pb.Selector.SerializeToString)
kinds = ["Pod", "Namespace", "Deployment", "Service", "ReplicaSet", "ReplicaController"]
messages = size = 0
try:
    for raw in watch(pb.Selector(nodeName=sys.argv[2], resourceKinds={k: "" for k in kinds})):
        messages += 1
        size += len(raw)
except grpc.RpcError:
    pass
print(messages, size)
"""

_FALCO = frozenset(selected_kinds(FALCO_KINDS))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _latency_buckets(collector: Collector) -> str:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{collector.metrics}/metrics")).text
    prefix = "metacollector_send_latency_seconds_bucket{le="
    return " ".join(
        line[len(prefix) :].replace('"} ', ":")
        for line in text.splitlines()
        if line.startswith(prefix)
    )


def _pods(watch: GrpcWatch) -> list[pb.Event]:
    events = list(watch.current.values())  # one C call: the pump thread may be adding
    return [e for e in events if e.kind == "Pod"]


def _canary_rev(watch: GrpcWatch) -> str | None:
    for event in _pods(watch):
        meta = json.loads(event.meta)
        if meta["name"] == "canary":
            return meta["labels"].get("rev")  # type: ignore[no-any-return]
    return None


def _services(watch: GrpcWatch, name: str) -> list[str]:
    for event in _pods(watch):
        if json.loads(event.meta)["name"] == name:
            return list(event.refs.resources["Service"].list)
    return []
