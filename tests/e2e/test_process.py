"""`metacollector run` as a real process: 100 streams on one connection, SIGTERM, exit codes."""

from __future__ import annotations

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

from tests.e2e.conftest import REAL_KUBECONFIG
from tests.e2e.grpc_watch import GrpcWatch

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
