"""The emulator: a Kubernetes API server over HTTP/1.1, wired from its parts.

A request goes transport (h11) -> ``Emulator.handle`` (outage, authentication, injected request
faults) -> admin, discovery, or a resource route: ``lists``, ``watches`` or ``objects`` (one
stored object). Errors are raised as ``status.HTTPError`` and answered as the real server's
``kind: Status`` bodies. Faults are set at start or at run time through ``POST /admin/faults``;
``GET /admin/stats`` reports requests, watches and bytes served.
"""

from __future__ import annotations

import logging
import ssl

import trio

from metacollector.emulator import admin, discovery, lists, objects
from metacollector.emulator.admin import Faults, Stats
from metacollector.emulator.churn import ChurnStats, run_store_churn
from metacollector.emulator.routing import Form, Route, parse_path
from metacollector.emulator.status import HTTPError, status_body
from metacollector.emulator.store import Store
from metacollector.emulator.transport import Reply, Request, Stream, Transport
from metacollector.emulator.watches import Watch

log = logging.getLogger("metacollector.emulator")
__all__ = ["Emulator", "Faults", "Stats"]


class Emulator:
    def __init__(
        self,
        *,
        token: str = "emulator-token",
        history_size: int = 10000,
        bookmark_interval: float = 60.0,
        streaming_lists: bool = True,
        faults: Faults | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.store = Store(history_size=history_size)
        self.tokens = {token}
        self.bookmark_interval = bookmark_interval
        self.streaming_lists = streaming_lists
        self.faults = faults or Faults()
        self.stats = Stats()
        self.ssl_context = ssl_context
        self.churn: ChurnStats | None = None  # the in-process churn's, if one was started
        self.transport = Transport(self.handle, lambda req, size: self.stats.served(req, size))
        self._nursery: trio.Nursery | None = None

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        served: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
        if self.ssl_context is not None:
            ctx = self.ssl_context
            served = [trio.SSLListener(lst, ctx, https_compatible=True) for lst in listeners]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(bound)
            await trio.serve_listeners(self.transport.connection, served)

    def start_churn(
        self,
        rate: float,
        duration: float | None = None,
        seed: int = 7,
        stamp_label: str | None = None,
    ) -> None:
        """Start the in-process churn (``run_store_churn``) beside the server; its counts are
        reported under ``churn`` in ``/admin/stats``."""
        assert self._nursery is not None, "serve() is not running"
        stats = self.churn = ChurnStats()
        self._nursery.start_soon(
            lambda: run_store_churn(
                self.store, rate, duration=duration, seed=seed, stats=stats, stamp_label=stamp_label
            )
        )

    def restart(self) -> None:
        """New resourceVersion epoch and every open connection dropped but the one asking (see
        Store.new_epoch)."""
        self.store.new_epoch()
        self.transport.drop()

    # --- requests --------------------------------------------------------------------------
    async def handle(self, request: Request) -> Reply | Stream | None:
        """The answer to one request (None: drop the connection unanswered)."""
        agent = request.agent
        self.stats.requests_by_agent[agent] = self.stats.requests_by_agent.get(agent, 0) + 1
        is_admin = request.path.startswith("/admin/")
        if self.faults.outage and self.faults.target(request) and not is_admin:
            return None  # like a dead API server
        try:
            self._authenticate(request)
            if is_admin:
                return admin.handle(self, request)
            return self._resource(request)
        except HTTPError as exc:
            return Reply(exc.code, exc.body(), exc.headers)
        except Exception:
            log.exception("emulator handler failed")
            return Reply(500, status_body(500, "InternalError", "internal error"))

    def _authenticate(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:].strip() not in self.tokens:
            raise HTTPError(401, "Unauthorized", "Unauthorized")

    def _resource(self, request: Request) -> Reply | Stream:
        method, path, query = request.method, request.path, request.query
        doc = discovery.document(path)
        if doc is not None and method == "GET":
            self.stats.count("get discovery")
            return Reply(200, doc)
        route = parse_path(path)
        if route is None:
            raise HTTPError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        is_watch = query.get("watch") in ("1", "true")
        self.stats.count(f"{'watch' if is_watch else method.lower()} {route.plural}")
        targeted = self.faults.target(request)
        if targeted:
            self._request_faults()
        form = Form.of(request.headers.get("accept", ""))
        if method == "GET" and not route.name:
            if is_watch:
                return Stream(self._watch(route, query, form, targeted).run)
            payload = lists.list_objects(self.store, route, query, form)
            self.stats.list_bytes += len(payload)
            return Reply(200, payload)
        if method == "GET":
            include = query.get("includeObject", "")
            return Reply(200, objects.get_as(self.store, route, form, include))
        if method == "POST" and not route.name:
            return Reply(201, objects.create(self.store, route, request.body))
        if method == "PUT" and route.name:
            return Reply(200, objects.replace(self.store, route, request.body))
        if method == "PATCH" and route.name:
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            return Reply(200, objects.patch(self.store, route, content_type, request.body))
        if method == "DELETE" and route.name:
            return Reply(200, objects.delete(self.store, route))
        raise HTTPError(405, "MethodNotAllowed", f"method {method} not allowed on {path}")

    def _request_faults(self) -> None:
        """Injected 429s and 500s, consumed one per request."""
        f = self.faults
        if f.throttle_requests > 0:
            f.throttle_requests -= 1
            raise HTTPError(
                429, "TooManyRequests", "too many requests", [("Retry-After", str(f.retry_after))]
            )
        if f.error_requests > 0:
            f.error_requests -= 1
            raise HTTPError(500, "InternalError", "injected server error")

    def _watch(self, route: Route, query: dict[str, str], form: Form, targeted: bool) -> Watch:
        return Watch(
            self.store,
            route,
            query,
            form,
            streaming_lists=self.streaming_lists,
            bookmark_interval=self.bookmark_interval,
            faults=self.faults,
            stats=self.stats,
            targeted=targeted,
        )
