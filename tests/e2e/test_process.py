"""`metacollector run` (and upstream's `meta-collector run`) as a real process: 100 streams on one connection, SIGTERM, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio

from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS, selected_kinds
from tests.support.cluster import Cluster
from tests.support.env import REAL_KUBECONFIG
from tests.support.grpc_watch import GrpcWatch
from tests.support.process import Collector

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    bool(REAL_KUBECONFIG), reason="uses the emulator's synthetic cluster"
)


def not_logs(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not JSON log records (on a loaded machine a "long gc
    pause" warning may come before or after the one-line error)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("{")]


@pytest.fixture
async def emulator() -> AsyncIterator[object]:
    from metacollector.emulator.inprocess import running_emulator

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
        with trio.fail_after(30):  # every stream open, syncs under way or done
            while await collector.metric("meta_collector_server_subscribers") != 100:
                await trio.sleep(0.05)
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
    lines = not_logs(proc.stderr.decode())
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
    lines = not_logs(proc.stderr.decode())
    assert proc.returncode == 1, lines
    assert lines[-1].startswith("metacollector: error: ") and str(port) in lines[-1]


# The flags controller-runtime's zap.Options binds, as a manifest for the upstream binary passes
# them; the chart's own invocation is `/meta-collector run`.
ZAP_FLAGS = (
    "--zap-log-level=info",
    "--zap-encoder=json",
    "--zap-devel=false",
    "--zap-stacktrace-level=error",
    "--zap-time-encoding=iso8601",
)


def upstream_pattern(msg: str, field: str, node: str) -> re.Pattern[str]:
    """Upstream's e2e log pattern (test/e2e/lifecycle_test.go), verbatim but for the node."""
    return re.compile(re.escape(f'"broker.grpc-server","msg":"{msg}","{field}":{json.dumps(node)}'))


ENTRY = Path(sys.executable).parent / "meta-collector"  # what `pip install` puts on PATH


@dataclass
class Invocation:
    """How to start `meta-collector`: as whom, with which command and environment."""

    command: list[str]
    popen: dict[str, Any]
    env: dict[str, str]
    home: Path  # a directory that uid can read (kubeconfig, entry script)


ENTRY_SCRIPT = "#!{python}\nimport sys\nfrom metacollector.cli import main\nsys.exit(main())\n"


@pytest.fixture(params=[None, 1000], ids=["own-uid", "uid-1000"])
def invocation(request: pytest.FixtureRequest) -> Iterator[Invocation]:
    """The installed entry point as ourselves; as uid/gid 1000 (the upstream chart's), the same
    entry script run by an interpreter that uid can read (this environment's may sit under a
    0700 home, as the image's world-readable /opt/venv does not), else skipped with why."""
    home = Path(tempfile.mkdtemp())
    home.chmod(0o755)
    try:
        if request.param is None:
            yield Invocation([str(ENTRY)], {}, {}, home)
            return
        if os.geteuid() != 0:
            pytest.skip("switching to uid 1000 needs root")
        as_1000 = {"user": 1000, "group": 1000, "extra_groups": []}
        command, env = [str(ENTRY)], {}
        try:
            subprocess.run([str(ENTRY), "version"], **as_1000, check=True, capture_output=True)
        except (PermissionError, subprocess.CalledProcessError):
            minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
            python = shutil.which(minor, path="/usr/bin:/usr/local/bin")
            if python is None:
                pytest.skip(f"uid 1000 cannot run {sys.executable} and there is no {minor}")
            script = home / "meta-collector"
            script.write_text(ENTRY_SCRIPT.format(python=python))
            script.chmod(0o755)
            site = next(p for p in sys.path if p.endswith("site-packages"))
            command, env = [str(script)], {"PYTHONPATH": f"{site}:{ROOT}"}
            probe = subprocess.run(
                [*command, "version"], **as_1000, env={**os.environ, **env}, capture_output=True
            )
            if probe.returncode != 0:
                pytest.skip(f"uid 1000 cannot run the collector here: {probe.stderr[-300:]!r}")
        yield Invocation(command, as_1000, env, home)
    finally:
        shutil.rmtree(home)


async def test_upstream_invocation_reaches_ready_and_logs_upstream_lines(
    emulator: Any, invocation: Invocation
) -> None:
    """`meta-collector run` (the entry point the image installs as /meta-collector) with the
    zap flags; also as uid/gid 1000, the upstream chart's securityContext."""
    assert ENTRY.exists(), "pip install -e . installs the meta-collector entry point"
    kubeconfig = invocation.home / "kubeconfig"
    shutil.copy(emulator.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)
    collector = Collector(
        kubeconfig,
        *ZAP_FLAGS,
        command=invocation.command,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **invocation.env},
        **invocation.popen,
    )
    try:
        await collector.ready()
        if invocation.popen:  # it really runs as 1000:1000
            status = Path(f"/proc/{collector.proc.pid}/status").read_text()
            assert re.search(r"^Uid:\t1000\t", status, re.M), status
            assert re.search(r"^Gid:\t1000\t", status, re.M), status
        watch = GrpcWatch(f"127.0.0.1:{collector.grpc}", "node-1").start()
        await watch.wait_for(lambda w: len(w.events) > 0)
        async with httpx.AsyncClient() as client:  # upstream's e2e reads the body as text
            body = (await client.get(f"http://127.0.0.1:{collector.metrics}/metrics")).text
        assert "meta_collector_server_subscribers 1" in body
        watch.close()
        with trio.fail_after(10):
            while await collector.metric("meta_collector_server_subscribers") != 0:
                await trio.sleep(0.05)
        rc, stderr = await collector.terminate()
    finally:
        if collector.proc.poll() is None:
            collector.proc.kill()
    assert rc == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]  # --zap-encoder=json
    # upstream's e2e patterns, byte for byte
    assert upstream_pattern("received watch request", "node", "node-1").search(stderr)
    assert upstream_pattern("stream deleted", "subscriber", "node-1").search(stderr)
    by_msg = {line["msg"]: line for line in lines}
    assert by_msg["starting grpc server"]["logger"] == "broker"
    assert by_msg["starting grpc server"]["addr"] == f"127.0.0.1:{collector.grpc}"
    sync = by_msg["starting initial event sync"]
    assert (sync["logger"], sync["node"]) == ("broker.grpc-server", "node-1")
    assert sync["subscriber UID"] == by_msg["received watch request"]["subscriber UID"]
    closing = by_msg["context canceled, closing connection"]
    assert (closing["logger"], closing["subscriber"]) == ("broker.grpc-server", "node-1")
    # the zap flags without a counterpart are noted once
    noted = [line for line in lines if line["msg"].startswith("flags accepted")]
    assert len(noted) == 1 and noted[0]["flags"] == {
        "--zap-stacktrace-level": "error",
        "--zap-time-encoding": "iso8601",
    }


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
from metacollector.subscriptions import FALCO_KINDS
channel = grpc.insecure_channel(sys.argv[1])
watch = channel.unary_stream("/metadata.Metadata/Watch", request_serializer=pb.Selector.SerializeToString)
kinds = FALCO_KINDS
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
