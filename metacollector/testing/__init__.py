"""Stand-ins and helpers shared by tests/ and bench/ (bench must not import tests). The
collector never imports them: `metacollector run` loads none (tests/test_lazy_imports.py)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import trio


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a child process to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collector_command(
    kubeconfig: str | Path, grpc_port: int, metrics_port: int, health_port: int, *extra: str
) -> list[str]:
    """The argv of `metacollector run` against ``kubeconfig``, serving on 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "metacollector.cli",
        "run",
        f"--kubeconfig={kubeconfig}",
        f"--broker-bind-address=127.0.0.1:{grpc_port}",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        f"--health-probe-bind-address=127.0.0.1:{health_port}",
        *extra,
    ]


async def wait_ready(url: str, timeout: float, alive: Callable[[], None] = lambda: None) -> None:
    """Poll ``url`` (a /readyz) until it answers 200; ``alive`` raises if the process died."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(timeout):
            while True:
                alive()
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
