"""`metacollector run` as a child process on free local ports."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import trio

from metacollector.testing import collector_command, free_port, wait_ready


class Collector:
    def __init__(self, kubeconfig: Path, *extra: str) -> None:
        self.grpc, self.metrics, self.health = free_port(), free_port(), free_port()
        self.proc = subprocess.Popen(
            collector_command(kubeconfig, self.grpc, self.metrics, self.health, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def ready(self, timeout: float = 30) -> None:
        def alive() -> None:
            assert self.proc.poll() is None, self.proc.communicate()[1]

        await wait_ready(f"http://127.0.0.1:{self.health}/readyz", timeout, alive)

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
