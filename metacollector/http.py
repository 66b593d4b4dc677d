"""Probes and metrics over HTTP: hypercorn (trio worker) serving a tiny ASGI app.

``/metrics`` (prometheus-client, text or OpenMetrics by negotiation) on the metrics address;
``/healthz`` (alive) and ``/readyz`` (every readiness check passes) on the health address. The
same address may serve both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client.exposition import choose_encoder

from metacollector import metrics
from metacollector.settings import BindAddress

log = logging.getLogger("metacollector.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class StartupError(Exception):
    pass


class Readiness:
    """Named checks; each returns True, or a string saying why it is not ready."""

    def __init__(self) -> None:
        self.checks: dict[str, Callable[[], bool | str]] = {}

    def add_check(self, name: str, check: Callable[[], bool | str]) -> None:
        self.checks[name] = check

    def status(self) -> tuple[bool, dict[str, str]]:
        failing = {}
        for name, check in self.checks.items():
            result = check()
            if result is not True:
                failing[name] = result if isinstance(result, str) else "not ready"
        return not failing, failing


def make_app(readiness: Readiness, *, serve_metrics: bool, serve_health: bool) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if serve_metrics and path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            status, body = 200, encoder(metrics.REGISTRY)
        elif serve_health and path == "/healthz":
            status, body, content_type = 200, b"ok\n", "text/plain"
        elif serve_health and path == "/readyz":
            ready, failing = readiness.status()
            content_type = "text/plain"
            if ready:
                status, body = 200, b"ok\n"
            else:
                lines = "".join(f"[-]{name} failed: {why}\n" for name, why in failing.items())
                status, body = 503, (lines + "readyz check failed\n").encode()
        else:
            status, body, content_type = 404, b"not found\n", "text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def _start(nursery: trio.Nursery, app: Any, bind: str, flag: str) -> int:
    """Start hypercorn on ``bind``; return the bound port."""
    address = BindAddress.parse(flag, bind)
    config = Config()
    config.bind = [str(address) if address.host else f"0.0.0.0:{address.port}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 1.0
    try:
        binds: list[str] = await nursery.start(partial(serve, app, config, mode="asgi"))
    except OSError as exc:
        raise StartupError(f"{flag}: cannot listen on {bind}: {exc.strerror or exc}") from None
    return int(binds[0].rsplit(":", 1)[1])


async def serve_http(
    metrics_bind: str,
    health_bind: str,
    readiness: Readiness,
    *,
    task_status: trio.TaskStatus[tuple[int | None, int | None]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started((metrics_port, health_port))``."""
    metrics_port: int | None = None
    async with trio.open_nursery() as nursery:
        shared = metrics_bind == health_bind and not metrics_bind.endswith(":0")
        if metrics_bind != "0" and shared:
            app = make_app(readiness, serve_metrics=True, serve_health=True)
            port = await _start(nursery, app, health_bind, "--health-probe-bind-address")
            task_status.started((port, port))
            return
        if metrics_bind != "0":
            app = make_app(readiness, serve_metrics=True, serve_health=False)
            metrics_port = await _start(nursery, app, metrics_bind, "--metrics-bind-address")
        app = make_app(readiness, serve_metrics=False, serve_health=True)
        health_port = await _start(nursery, app, health_bind, "--health-probe-bind-address")
        task_status.started((metrics_port, health_port))
