"""Probes and metrics over HTTP: hypercorn (trio worker) serving a tiny ASGI app.

``/metrics`` (prometheus-client, text or OpenMetrics by content negotiation) on the metrics
address; ``/healthz`` (the process runs) and ``/readyz`` (every readiness check passes) on the
health address. The same address may serve all three.

Bind strings follow upstream (controller-runtime): ``":8080"`` listens on every interface (IPv6
and IPv4 where the host has both), ``"127.0.0.1:0"`` picks a free port, ``"[::1]:8081"``, and
``"0"`` disables that listener. We create, bind and close the listening sockets ourselves, so a
busy port or a malformed address is one clear :class:`StartupError` before anything is served,
and no listener outlives :func:`serve_http`.

Shutdown: cancelling :func:`serve_http` stops accepting at once, lets requests in flight finish
for up to ``GRACEFUL_TIMEOUT`` seconds, then closes the sockets.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client.exposition import choose_encoder

from metacollector import metrics
from metacollector.settings import BindAddress, SettingsError

log = logging.getLogger("metacollector.http")

GRACEFUL_TIMEOUT = 1.0  # seconds for in-flight probe/scrape requests at shutdown

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class StartupError(Exception):
    """A listener could not be started; the message is the one line to print."""


# --- readiness --------------------------------------------------------------------------------


class Readiness:
    """What ``/readyz`` consults: named checks, each returning True or the reason it fails.

    The app registers one check per condition (see ``app.serve``)::

        readiness = Readiness()
        readiness.add_check("reflectors", relist_check(reflectors, grace=10.0))
        readiness.add_check("grpc", lambda: grpc_listening or "gRPC port not listening")
    """

    def __init__(self) -> None:
        self.checks: dict[str, Callable[[], bool | str]] = {}

    def add_check(self, name: str, check: Callable[[], bool | str]) -> None:
        """Register (or replace) the check ``name``: True = ok, a str = why not ready."""
        self.checks[name] = check

    def status(self) -> tuple[bool, dict[str, str]]:
        """(ready, {failing check: reason}); a check that raises counts as failing."""
        failing: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                result = check()
            except Exception as exc:
                failing[name] = f"check raised {type(exc).__name__}: {exc}"
                continue
            if result is not True:
                failing[name] = result if isinstance(result, str) and result else "not ready"
        return not failing, failing


class ReflectorState(Protocol):
    """What :func:`relist_check` needs from a reflector."""

    @property
    def synced(self) -> trio.Event: ...

    @property
    def relisting_since(self) -> float | None: ...  # trio.current_time() when a relist began


def _reflector_name(reflector: object, index: int) -> str:
    resource = getattr(reflector, "resource", None)
    name = getattr(resource, "plural", None) or getattr(reflector, "kind", None)
    return str(name) if name else f"reflector {index}"


def relist_check(reflectors: Iterable[ReflectorState], grace: float) -> Callable[[], bool | str]:
    """The readiness rule: every reflector has synced, and none has been relisting for longer
    than ``grace`` seconds (trio clock). A short relist after a 410 keeps serving the last good
    state, so it does not flap the probe."""
    items = list(reflectors)

    def check() -> bool | str:
        now = trio.current_time()
        reasons: list[str] = []
        for index, r in enumerate(items):
            if not r.synced.is_set():
                reasons.append(f"{_reflector_name(r, index)}: not synced")
            elif r.relisting_since is not None and now - r.relisting_since > grace:
                took = now - r.relisting_since
                reasons.append(f"{_reflector_name(r, index)}: relisting for {took:.0f}s")
        return "; ".join(reasons) if reasons else True

    return check


# --- the ASGI app -----------------------------------------------------------------------------


def readyz_body(failing: dict[str, str]) -> bytes:
    """Kubernetes' ``/readyz?verbose`` style: one ``[-]name failed: reason`` line per check."""
    lines = "".join(f"[-]{name} failed: {why}\n" for name, why in failing.items())
    return (lines + "readyz check failed\n").encode()


def make_app(readiness: Readiness, *, serve_metrics: bool, serve_health: bool) -> ASGIApp:
    """The ASGI app for one listener: the metrics path, the probe paths, or all three."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        content_type = "text/plain; charset=utf-8"
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed\n"
        elif serve_metrics and path == "/metrics":
            accept = ",".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"accept")
            encoder, content_type = choose_encoder(accept)
            status, body = 200, encoder(metrics.REGISTRY)
        elif serve_health and path in ("/healthz", "/livez"):
            status, body = 200, b"ok\n"
        elif serve_health and path == "/readyz":
            ready, failing = readiness.status()
            status, body = (200, b"ok\n") if ready else (503, readyz_body(failing))
        else:
            status, body = 404, b"not found\n"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return app


# --- listeners --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    flag: str
    bind: str
    address: BindAddress | None  # None: disabled ("0")


def parse_bind(flag: str, bind: str) -> BindAddress | None:
    """``"0"`` disables; otherwise HOST:PORT as upstream. Raises StartupError."""
    if bind.strip() == "0":
        return None
    try:
        return BindAddress.parse(flag, bind)
    except SettingsError as exc:
        raise StartupError(str(exc)) from None


def _dual_stack(port: int) -> socket.socket | None:
    """A socket on ``[::]:port`` that also accepts IPv4, or None when the host lacks IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            return None
        raise
    return sock


def open_listener(flag: str, bind: str, address: BindAddress) -> socket.socket:
    """Create, bind and listen; a failure is one StartupError line naming the flag."""
    try:
        sock = _dual_stack(address.port) if not address.host else None
        if sock is None:
            host = address.host or "0.0.0.0"
            infos = socket.getaddrinfo(
                host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, type_, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
            except BaseException:
                sock.close()
                raise
        sock.listen(128)
        sock.setblocking(False)
    except socket.gaierror as exc:
        raise StartupError(f"{flag}: cannot resolve {bind!r}: {exc.strerror}") from None
    except OSError as exc:
        raise StartupError(f"{flag}: cannot listen on {bind!r}: {exc.strerror or exc}") from None
    return sock


def _config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.keep_alive_timeout = 30  # Prometheus keeps scrape connections open
    return config


async def _run_hypercorn(
    app: ASGIApp,
    sock: socket.socket,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """hypercorn's trio worker on a socket we opened (``hypercorn.trio.serve`` would open its
    own and never close it); returns once ``shutdown`` is set and requests have finished."""
    config = _config()
    framework: Any = app
    await worker_serve(
        wrap_app(framework, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]),
        shutdown_trigger=shutdown.wait,
        task_status=task_status,
    )


async def serve_http(
    metrics_bind: str,
    health_bind: str,
    readiness: Readiness,
    *,
    task_status: trio.TaskStatus[tuple[int | None, int | None]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``metrics_bind`` and the probes on ``health_bind`` until cancelled.

    ``task_status.started((metrics_port, health_port))`` with the ports actually bound (None for
    a listener disabled with ``"0"``). Raises :class:`StartupError` for a malformed address or a
    port that cannot be bound, before serving anything.
    """
    metrics_addr = parse_bind("--metrics-bind-address", metrics_bind)
    health_addr = parse_bind("--health-probe-bind-address", health_bind)
    shared = metrics_addr is not None and metrics_addr == health_addr and metrics_addr.port != 0
    plan: list[tuple[str, str, BindAddress, ASGIApp]] = []
    if shared and health_addr is not None:
        app = make_app(readiness, serve_metrics=True, serve_health=True)
        plan.append(("--health-probe-bind-address", health_bind, health_addr, app))
    else:
        if metrics_addr is not None:
            app = make_app(readiness, serve_metrics=True, serve_health=False)
            plan.append(("--metrics-bind-address", metrics_bind, metrics_addr, app))
        if health_addr is not None:
            app = make_app(readiness, serve_metrics=False, serve_health=True)
            plan.append(("--health-probe-bind-address", health_bind, health_addr, app))

    sockets: list[socket.socket] = []
    try:
        for flag, bind, address, _ in plan:
            sockets.append(open_listener(flag, bind, address))
        ports = {flag: int(s.getsockname()[1]) for (flag, *_), s in zip(plan, sockets, strict=True)}
        metrics_port = ports.get("--metrics-bind-address")
        health_port = ports.get("--health-probe-bind-address")
        if shared:
            metrics_port = health_port
        await _serve_until_cancelled(plan, sockets, task_status, (metrics_port, health_port))
    finally:
        for sock in sockets:
            sock.close()


async def _serve_until_cancelled(
    plan: list[tuple[str, str, BindAddress, ASGIApp]],
    sockets: list[socket.socket],
    task_status: trio.TaskStatus[tuple[int | None, int | None]],
    ports: tuple[int | None, int | None],
) -> None:
    """Run one hypercorn worker per socket until cancelled.

    The workers run under a shielded cancel scope: when the caller cancels us, they get
    hypercorn's graceful shutdown (stop accepting, finish requests in flight) bounded by a
    deadline, instead of being torn down mid-response."""
    shutdown = trio.Event()
    shielded = trio.CancelScope(shield=True)

    async def run_workers(*, task_status: trio.TaskStatus[None]) -> None:
        with shielded:
            async with trio.open_nursery() as workers:
                for (_, _, _, app), sock in zip(plan, sockets, strict=True):
                    await workers.start(_run_hypercorn, app, sock, shutdown)
                task_status.started()

    async with trio.open_nursery() as nursery:
        await nursery.start(run_workers)
        task_status.started(ports)
        try:
            await trio.sleep_forever()
        finally:
            shutdown.set()
            shielded.deadline = trio.current_time() + GRACEFUL_TIMEOUT + 1.0
