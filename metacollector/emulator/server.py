"""The emulator's HTTP server (h11 on trio): REST, discovery, lists, watches, admin, faults.

Error bodies are ``kind: Status`` objects with the real server's reasons and codes. Watches are
chunked NDJSON. Fault injection (``Faults``) can be set at start or at run time through
``POST /admin/faults``; ``GET /admin/stats`` reports requests, watches and bytes served.
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import msgspec
import trio

from metacollector.emulator import discovery, objects
from metacollector.emulator.churn import ChurnStats, run_store_churn
from metacollector.emulator.routing import Form, Route, json_body, parse_path
from metacollector.emulator.selectors import SelectorError, object_filter
from metacollector.emulator.status import HTTPError, status_body
from metacollector.emulator.store import RESOURCES, Event, Expired, Obj, Store, partial
from metacollector.emulator.tables import encode_table, table

log = logging.getLogger("metacollector.emulator")
_current_connection: contextvars.ContextVar[trio.CancelScope] = contextvars.ContextVar("conn")
_agent: contextvars.ContextVar[str] = contextvars.ContextVar("agent")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
WATCH_BATCH = 256  # events written with one send when a watcher has several queued
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass
class Faults:
    """Injected misbehaviour; counts are consumed as requests or watches use them."""

    drop_watch_after: int = 0  # close every watch connection after N events (0 = never)
    throttle_requests: int = 0  # answer the next N requests with 429
    retry_after: int = 1
    error_requests: int = 0  # answer the next N requests with 500
    malformed_lines: int = 0  # inject a garbage line before the next N watch events
    slow_write_delay: float = 0.0  # seconds to sleep before each watch write
    only_user_agent: str = ""  # when set, faults hit only clients whose User-Agent contains it
    outage: bool = False  # API outage: every non-admin request gets its connection dropped


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)
    watches_opened: int = 0
    watches_open: int = 0
    bytes_served: int = 0
    list_bytes: int = 0
    watch_bytes: int = 0
    bytes_by_agent: dict[str, int] = field(default_factory=dict)  # by User-Agent product
    requests_by_agent: dict[str, int] = field(default_factory=dict)


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
        self._connections: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None

    # --- serving ---------------------------------------------------------------------------
    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        served: list[Any] = list(listeners)
        if self.ssl_context is not None:
            ctx = self.ssl_context
            served = [trio.SSLListener(lst, ctx, https_compatible=True) for lst in listeners]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(bound)
            await trio.serve_listeners(self._connection, served)

    def start_churn(self, rate: float, duration: float | None = None, seed: int = 7) -> None:
        """Start the in-process churn (``run_store_churn``) beside the server; its counts are
        reported under ``churn`` in ``/admin/stats``."""
        assert self._nursery is not None, "serve() is not running"
        self.churn = ChurnStats()
        self._nursery.start_soon(
            lambda: run_store_churn(
                self.store, rate, duration=duration, seed=seed, stats=self.churn
            )
        )

    def restart(self, keep: trio.CancelScope | None = None) -> None:
        """New resourceVersion epoch and every open connection dropped (see Store.new_epoch)."""
        self.store.new_epoch()
        for scope in list(self._connections):
            if scope is not keep:
                scope.cancel()

    async def _connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            _current_connection.set(scope)
            try:
                await self._serve_connection(stream, conn)
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                h11.ProtocolError,
                ssl.SSLError,
                OSError,
            ):
                pass
            finally:
                self._connections.discard(scope)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        """Requests one after another (keep-alive) until the peer closes or a watch ends."""
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed or PAUSED
                    return
            assert request is not None
            keep = await self._respond(stream, conn, request, body)
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _send(self, stream: trio.abc.Stream, conn: h11.Connection, *events: Any) -> None:
        """Serialize ``events`` with h11 and write them with one ``send_all`` (one syscall)."""
        data = b"".join(conn.send(event) or b"" for event in events)
        if data:
            self.stats.bytes_served += len(data)
            agent = _agent.get("")
            self.stats.bytes_by_agent[agent] = self.stats.bytes_by_agent.get(agent, 0) + len(data)
            await stream.send_all(data)

    async def _respond(
        self, stream: trio.abc.Stream, conn: h11.Connection, req: h11.Request, body: bytes
    ) -> bool:
        method = req.method.decode()
        target = req.target.decode()
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        agent = headers.get("user-agent", "").split("/")[0]
        _agent.set(agent)
        self.stats.requests_by_agent[agent] = self.stats.requests_by_agent.get(agent, 0) + 1
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        outage = self.faults.outage and self.faults.only_user_agent in headers.get("user-agent", "")
        if outage and not url.path.startswith("/admin/"):
            return False  # dropped without a response, like a dead API server
        try:
            self._authorize(headers, url.path)
            result = await self._dispatch(method, url.path, query, headers, body)
        except HTTPError as exc:
            payload = exc.body()
            await self._full(stream, conn, exc.code, payload, exc.headers)
            return True
        except Exception:
            log.exception("emulator handler failed")
            await self._full(stream, conn, 500, status_body(500, "InternalError", "internal error"))
            return True
        if isinstance(result, tuple):
            code, payload = result
            await self._full(stream, conn, code, payload)
            return True
        await self._stream(stream, conn, result)
        return False  # a watch ends the connection's keep-alive cycle

    async def _full(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        code: int,
        payload: bytes,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *(extra or []),
        ]
        await self._send(
            stream,
            conn,
            h11.Response(status_code=code, headers=headers),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        )

    async def _stream(
        self, stream: trio.abc.Stream, conn: h11.Connection, produce: Producer
    ) -> None:
        await self._send(
            stream,
            conn,
            h11.Response(
                status_code=200,
                headers=[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
            ),
        )
        self.stats.watches_opened += 1
        self.stats.watches_open += 1

        async def write(chunk: bytes) -> None:
            if self.faults.slow_write_delay:
                await trio.sleep(self.faults.slow_write_delay)
            self.stats.watch_bytes += len(chunk)
            await self._send(stream, conn, h11.Data(data=chunk))

        try:
            await produce(write)
            await self._send(stream, conn, h11.EndOfMessage())
        except _Drop:
            return  # the connection is closed without ending the chunked body
        finally:
            self.stats.watches_open -= 1

    def _authorize(self, headers: dict[str, str], path: str) -> None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:].strip() not in self.tokens:
            raise HTTPError(401, "Unauthorized", "Unauthorized")

    # --- routing ---------------------------------------------------------------------------
    async def _dispatch(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes] | Producer:
        if path.startswith("/admin/"):
            return self._admin(method, path, body)
        verb = method.lower()
        doc = discovery.document(path)
        if doc is not None and method == "GET":
            self._count("get discovery")
            return 200, doc
        route = parse_path(path)
        if route is None:
            raise HTTPError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        is_watch = query.get("watch") in ("1", "true")
        self._count(f"{'watch' if is_watch else verb} {route.plural}")
        f = self.faults
        targeted = f.only_user_agent in headers.get("user-agent", "")
        if targeted and f.throttle_requests > 0:
            f.throttle_requests -= 1
            raise HTTPError(
                429, "TooManyRequests", "too many requests", [("Retry-After", str(f.retry_after))]
            )
        if targeted and f.error_requests > 0:
            f.error_requests -= 1
            raise HTTPError(500, "InternalError", "injected server error")
        form = Form.of(headers.get("accept", ""))
        if method == "GET" and not route.name:
            if is_watch:
                return self._watch(route, query, form, targeted)
            return 200, self._list(route, query, form)
        if method == "GET":
            stored = objects.get(self.store, route)
            if form is Form.TABLE:
                meta = {"resourceVersion": str(stored.rv)}
                include = query.get("includeObject", "")
                return 200, encode_table(route.plural, [stored.obj], meta, include)
            return 200, _encode(partial(stored.obj)) if form is Form.PARTIAL else stored.data
        if method == "POST" and not route.name:
            return 201, objects.create(self.store, route, body)
        if method == "PUT" and route.name:
            return 200, objects.replace(self.store, route, body)
        if method == "PATCH" and route.name:
            content_type = headers.get("content-type", "").split(";")[0].strip()
            return 200, objects.patch(self.store, route, content_type, body)
        if method == "DELETE" and route.name:
            return 200, objects.delete(self.store, route)
        raise HTTPError(405, "MethodNotAllowed", f"method {method} not allowed on {path}")

    def _count(self, key: str) -> None:
        self.stats.requests[key] = self.stats.requests.get(key, 0) + 1

    # --- lists -----------------------------------------------------------------------------
    def _filter(self, route: Route, query: dict[str, str]) -> Callable[[Obj], bool] | None:
        try:
            predicate = object_filter(
                query.get("labelSelector"), query.get("fieldSelector"), route.plural
            )
        except SelectorError as exc:
            raise HTTPError(400, "BadRequest", str(exc)) from None
        if route.namespace:
            ns = route.namespace
            inner = predicate
            return lambda o: o["metadata"].get("namespace") == ns and (inner is None or inner(o))
        return predicate

    def _list(self, route: Route, query: dict[str, str], form: Form) -> bytes:
        store = self.store
        limit = int(query.get("limit") or 0)
        rv_param = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        cont = query.get("continue", "")
        predicate = self._filter(route, query)
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont))
                snapshot_rv, snap_id, offset = token["rv"], token["id"], token["offset"]
            except (ValueError, KeyError, TypeError):
                raise HTTPError(400, "BadRequest", "invalid continue token") from None
            snap = store.snapshots.get(snap_id)
            if snap is None:
                raise HTTPError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                )
            items = snap[1]
        else:
            if match == "Exact" and rv_param and int(rv_param) != store.rv:
                if int(rv_param) < store.compacted_rv:
                    raise HTTPError(410, "Expired", f"Too large resource version: {rv_param}")
                raise HTTPError(
                    410,
                    "Expired",
                    f"resourceVersion {rv_param} is not the current one (the emulator keeps no older snapshots)",
                )
            if rv_param not in ("", "0") and int(rv_param) > store.rv:
                raise HTTPError(
                    504, "Timeout", f"Too large resource version: {rv_param}, current: {store.rv}"
                )
            snapshot_rv, offset = store.rv, 0
            items = [s for s in store.items(route.plural) if predicate is None or predicate(s.obj)]
            snap_id = ""
        page = items[offset : offset + limit] if limit else items[offset:]
        next_offset = offset + len(page)
        token = ""
        if limit and next_offset < len(items):
            if not snap_id:
                snap_id = f"{snapshot_rv}-{len(store.snapshots)}-{id(items)}"
                store.snapshots[snap_id] = (snapshot_rv, items)
                while len(store.snapshots) > 64:
                    store.snapshots.pop(next(iter(store.snapshots)))
            token = base64.urlsafe_b64encode(
                json.dumps({"rv": snapshot_rv, "id": snap_id, "offset": next_offset}).encode()
            ).decode()
        elif snap_id:
            store.snapshots.pop(snap_id, None)
        info = RESOURCES[route.plural]
        meta: Obj = {"resourceVersion": str(snapshot_rv)}
        if token:
            meta["continue"] = token
            meta["remainingItemCount"] = len(items) - next_offset
        if form is Form.TABLE:
            include = query.get("includeObject", "")
            out = encode_table(route.plural, (s.obj for s in page), meta, include)
            self.stats.list_bytes += len(out)
            return out
        if form is Form.PARTIAL:
            head = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
            }
            body = b",".join(_encode(partial(s.obj, list_item=True)) for s in page)
        else:
            head = {"kind": f"{info.kind}List", "apiVersion": info.api_version, "metadata": meta}
            body = b",".join(s.data for s in page)
        out = _encode(head)[:-1] + b',"items":[' + body + b"]}"
        self.stats.list_bytes += len(out)
        return out

    # --- watches ---------------------------------------------------------------------------
    def _watch(
        self, route: Route, query: dict[str, str], form: Form, targeted: bool = True
    ) -> Producer:
        store = self.store
        predicate = self._filter(route, query)
        rv_param = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        initial = query.get("sendInitialEvents") in ("1", "true")
        timeout = float(query.get("timeoutSeconds") or 1800)
        if initial:
            if not self.streaming_lists:
                raise HTTPError(
                    422,
                    "Invalid",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                )
            if query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks:
                raise HTTPError(
                    422,
                    "Invalid",
                    "sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true",
                )
        try:
            since = store.rv if rv_param in ("", "0") or initial else int(rv_param)
        except ValueError:
            raise HTTPError(400, "BadRequest", f"invalid resourceVersion {rv_param!r}") from None
        if since > store.rv:
            raise HTTPError(
                504, "Timeout", f"Too large resource version: {since}, current: {store.rv}"
            )
        synthetic = rv_param in ("", "0") or initial
        try:
            watcher, live, backlog = store.watch(route.plural, since, predicate)
        except Expired:
            raise HTTPError(
                410, "Expired", f"too old resource version: {since} ({store.compacted_rv})"
            ) from None
        initial_items = (
            [s for s in store.items(route.plural) if predicate is None or predicate(s.obj)]
            if synthetic
            else []
        )
        info = RESOURCES[route.plural]
        faults = self.faults

        include = query.get("includeObject", "")

        def line(event: Event) -> bytes:
            if form is Form.TABLE:
                row = table(route.plural, [event.obj], {"resourceVersion": str(event.rv)}, include)
                return _encode({"type": event.type, "object": row}) + b"\n"
            return event.partial_line() if form is Form.PARTIAL else event.line()

        # Events already queued are written together (one chunk, one syscall) rather than one
        # by one; a client splitting on newlines cannot tell. Slow-write faults stay per event.
        batch = 1 if faults.slow_write_delay else WATCH_BATCH

        def bookmark(rv: int, end: bool = False) -> bytes:
            meta: Obj = {"resourceVersion": str(rv)}
            if end:
                meta["annotations"] = {INITIAL_EVENTS_END: "true"}
            metadata_only = form is Form.PARTIAL
            kind = "PartialObjectMetadata" if metadata_only else info.kind
            api = "meta.k8s.io/v1" if metadata_only else info.api_version
            return (
                _encode(
                    {
                        "type": "BOOKMARK",
                        "object": {"kind": kind, "apiVersion": api, "metadata": meta},
                    }
                )
                + b"\n"
            )

        async def produce(write: Write) -> None:
            sent = 0
            last_rv = since
            try:
                with trio.move_on_after(timeout):
                    for i in range(0, len(initial_items), batch):
                        await write(
                            b"".join(
                                line(Event(s.rv, route.plural, "ADDED", s.obj, s.data))
                                for s in initial_items[i : i + batch]
                            )
                        )
                    if initial:
                        await write(bookmark(store.rv, end=True))
                    pending = list(backlog)
                    next_bookmark = trio.current_time() + self.bookmark_interval
                    while True:
                        out: list[bytes] = []
                        for event in pending:
                            if event.rv <= last_rv:
                                continue
                            if targeted and faults.malformed_lines > 0:
                                faults.malformed_lines -= 1
                                out.append(b'{"type":"MODIFIED","object":{"this is not json\n')
                            out.append(line(event))
                            last_rv = event.rv
                            sent += 1
                            if (
                                targeted
                                and faults.drop_watch_after
                                and sent >= faults.drop_watch_after
                            ):
                                await write(b"".join(out))
                                raise _Drop()
                            if len(out) >= batch:
                                await write(b"".join(out))
                                out = []
                        if out:
                            await write(b"".join(out))
                        if watcher.expired and live.statistics().current_buffer_used == 0:
                            await write(
                                _encode(
                                    {
                                        "type": "ERROR",
                                        "object": {
                                            "kind": "Status",
                                            "apiVersion": "v1",
                                            "metadata": {},
                                            "status": "Failure",
                                            "message": "The resourceVersion for the provided watch is too old.",
                                            "reason": "Expired",
                                            "code": 410,
                                        },
                                    }
                                )
                                + b"\n"
                            )
                            return
                        pending = _drain(live, batch)
                        if pending or watcher.expired:
                            continue
                        with trio.move_on_at(next_bookmark):
                            received = await live.receive()
                            if received is None:
                                continue
                            pending = [received]
                        if not pending and trio.current_time() >= next_bookmark:
                            next_bookmark = trio.current_time() + self.bookmark_interval
                            if bookmarks:
                                await write(bookmark(store.rv))
            finally:
                store.unwatch(watcher)

        return produce

    # --- admin -----------------------------------------------------------------------------
    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/admin/stats" and method == "GET":
            return 200, _encode(
                {
                    **asdict(self.stats),
                    "resourceVersion": self.store.rv,
                    "faults": asdict(self.faults),
                    "churn": asdict(self.churn) if self.churn else None,
                }
            )
        if path == "/admin/faults" and method == "POST":
            changes = json_body(body)
            for key, value in changes.items():
                if not hasattr(self.faults, key):
                    raise HTTPError(400, "BadRequest", f"unknown fault {key!r}")
                setattr(self.faults, key, type(getattr(self.faults, key))(value))
            return 200, _encode(asdict(self.faults))
        if path == "/admin/churn" and method == "POST":
            args = json_body(body)
            self.start_churn(float(args["rate"]), args.get("duration"), int(args.get("seed", 7)))
            return 200, b"{}"
        if path == "/admin/compact" and method == "POST":
            self.store.compact()
            return 200, b"{}"
        if path == "/admin/restart" and method == "POST":
            self.restart(keep=_current_connection.get(None))
            return 200, b"{}"
        if path == "/admin/drop-connections" and method == "POST":
            for scope in list(self._connections):
                if scope is not _current_connection.get(None):
                    scope.cancel()  # (all clients: test tools reconnect too)
            return 200, b"{}"
        if path == "/admin/tokens" and method == "POST":
            self.tokens = set(json_body(body)["tokens"])
            return 200, b"{}"
        if path == "/admin/reset-stats" and method == "POST":
            self.stats = Stats()
            return 200, b"{}"
        raise HTTPError(404, "NotFound", f"no admin endpoint {method} {path}")


Write = Callable[[bytes], Awaitable[None]]
Producer = Callable[[Write], Awaitable[None]]


def _drain(live: trio.MemoryReceiveChannel[Event | None], limit: int) -> list[Event]:
    """Up to ``limit`` events already queued, without waiting (None markers are skipped: the
    watcher's ``expired`` flag carries that news)."""
    out: list[Event] = []
    while len(out) < limit:
        try:
            event = live.receive_nowait()
        except trio.WouldBlock:
            break
        if event is not None:
            out.append(event)
    return out


class _Drop(Exception):
    """Injected fault: drop the watch connection without a clean end."""
