"""`metacollector run` as a child process on free local ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from metacollector.testing import collector_command, free_port, wait_ready

MODULE_COMMAND = (sys.executable, "-m", "metacollector.cli")


class Collector:
    """``command`` replaces ``python -m metacollector.cli`` (e.g. the ``meta-collector`` entry
    point); ``popen`` goes to Popen (``env``, ``user``...)."""

    def __init__(
        self,
        kubeconfig: Path,
        *extra: str,
        command: Sequence[str] = MODULE_COMMAND,
        **popen: Any,
    ) -> None:
        self.grpc, self.metrics, self.health = free_port(), free_port(), free_port()
        argv = collector_command(kubeconfig, self.grpc, self.metrics, self.health, *extra)
        self.proc = subprocess.Popen(
            [*command, *argv[len(MODULE_COMMAND) :]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **{"env": {**os.environ, "PYTHONUNBUFFERED": "1"}, **popen},
        )
        # drain stderr as it comes: a full pipe (a few hundred log lines) would block the
        # collector's writes and so its shutdown
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    async def ready(self, timeout: float = 30) -> None:
        def alive() -> None:
            assert self.proc.poll() is None, "".join(self._stderr)

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
        await trio.to_thread.run_sync(self._drain.join, timeout)
        return rc, "".join(self._stderr)
