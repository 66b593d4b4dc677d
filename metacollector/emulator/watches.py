"""Watches: chunked NDJSON streams of watch events, as the real server sends them.

A watch from a resourceVersion replays the history after it and then follows live writes; from
"" / "0" (or with ``sendInitialEvents``) it starts with synthetic ADDED events for the current
objects, and ``sendInitialEvents`` ends those with the ``k8s.io/initial-events-end`` bookmark.
Bookmarks are sent every ``bookmark_interval`` of silence when asked for; a watcher that falls
behind, or whose history is compacted, gets an in-band 410 Expired and the stream ends.

Faults (``admin.Faults``) act here: garbage lines, dropped streams, slow writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import trio

from metacollector.emulator.admin import Faults, Stats
from metacollector.emulator.lists import request_filter, selected
from metacollector.emulator.routing import Form, Route
from metacollector.emulator.status import HTTPError
from metacollector.emulator.store import Event, Expired, Obj, Store, Stored
from metacollector.emulator.tables import table
from metacollector.emulator.transport import Drop, Write
from metacollector.kube.resources import INITIAL_EVENTS_END

_encode = msgspec.json.Encoder().encode
BATCH = 256  # events written with one send when a watcher has several queued
MALFORMED_LINE = b'{"type":"MODIFIED","object":{"this is not json\n'
EXPIRED_LINE = (
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


@dataclass(frozen=True, slots=True)
class WatchParams:
    """A watch request's parameters, checked as the real server checks them."""

    since: int  # events after this resourceVersion are sent
    synthetic: bool  # start with ADDED events for the current objects
    initial_events_end: bool  # sendInitialEvents: end those with the marking bookmark
    bookmarks: bool
    timeout: float

    @classmethod
    def parse(cls, query: dict[str, str], store: Store, streaming_lists: bool) -> WatchParams:
        rv_param = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        initial = query.get("sendInitialEvents") in ("1", "true")
        if initial:
            if not streaming_lists:
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
        synthetic = rv_param in ("", "0") or initial
        try:
            since = store.rv if synthetic else int(rv_param)
        except ValueError:
            raise HTTPError(400, "BadRequest", f"invalid resourceVersion {rv_param!r}") from None
        if since > store.rv:
            raise HTTPError(
                504, "Timeout", f"Too large resource version: {since}, current: {store.rv}"
            )
        return cls(since, synthetic, initial, bookmarks, float(query.get("timeoutSeconds") or 1800))


class Watch:
    """One watch stream: registered with the store when made, ``run`` writes it to the end."""

    def __init__(
        self,
        store: Store,
        route: Route,
        query: dict[str, str],
        form: Form,
        *,
        streaming_lists: bool,
        bookmark_interval: float,
        faults: Faults,
        stats: Stats,
        targeted: bool,
    ) -> None:
        self.store, self.route, self.form = store, route, form
        self.include = query.get("includeObject", "")
        predicate = request_filter(route, query)
        self.params = WatchParams.parse(query, store, streaming_lists)
        self.bookmark_interval = bookmark_interval
        self.faults, self.stats = faults, stats
        self.targeted = targeted  # whether the faults apply to this client
        try:
            self.watcher, self.live, self.backlog = store.watch(
                route.plural, self.params.since, predicate
            )
        except Expired:
            raise HTTPError(
                410,
                "Expired",
                f"too old resource version: {self.params.since} ({store.compacted_rv})",
            ) from None
        self.initial: list[Stored] = (
            selected(store, route.plural, predicate) if self.params.synthetic else []
        )
        # Events already queued are written together (one chunk, one syscall) rather than one
        # by one; a client splitting on newlines cannot tell. Slow-write faults stay per event.
        self.batch = 1 if faults.slow_write_delay else BATCH
        self.last_rv = self.params.since
        self.sent = 0

    async def run(self, send: Write) -> None:
        stats = self.stats
        stats.watches_opened += 1
        stats.watches_open += 1

        async def write(chunk: bytes) -> None:
            if self.faults.slow_write_delay:
                await trio.sleep(self.faults.slow_write_delay)
            stats.watch_bytes += len(chunk)
            await send(chunk)

        try:
            with trio.move_on_after(self.params.timeout):
                await self._initial_events(write)
                await self._follow(write)
        finally:
            stats.watches_open -= 1
            self.store.unwatch(self.watcher)

    async def _initial_events(self, write: Write) -> None:
        for i in range(0, len(self.initial), self.batch):
            chunk = self.initial[i : i + self.batch]
            await write(
                b"".join(
                    self._line(Event(s.rv, self.route.plural, "ADDED", s.obj, s.data))
                    for s in chunk
                )
            )
        if self.params.initial_events_end:
            await write(self._bookmark(self.store.rv, end=True))

    async def _follow(self, write: Write) -> None:
        """History after ``since``, then live events, bookmarks in the silences, until expired
        (or cancelled by the timeout)."""
        pending = list(self.backlog)
        next_bookmark = trio.current_time() + self.bookmark_interval
        while True:
            await self._events(write, pending)
            if self.watcher.expired and self.live.statistics().current_buffer_used == 0:
                await write(EXPIRED_LINE)
                return
            pending = _drain(self.live, self.batch)
            if pending or self.watcher.expired:
                continue
            with trio.move_on_at(next_bookmark):
                received = await self.live.receive()
                if received is not None:  # None: expired, which the flag tells
                    pending = [received]
                continue
            next_bookmark = trio.current_time() + self.bookmark_interval
            if self.params.bookmarks:
                await write(self._bookmark(self.store.rv))

    async def _events(self, write: Write, events: list[Event]) -> None:
        """Write ``events`` newer than the last one sent, in batches, with the faults."""
        faults, targeted = self.faults, self.targeted
        out: list[bytes] = []
        for event in events:
            if event.rv <= self.last_rv:
                continue
            if targeted and faults.malformed_lines > 0:
                faults.malformed_lines -= 1
                out.append(MALFORMED_LINE)
            out.append(self._line(event))
            self.last_rv = event.rv
            self.sent += 1
            if targeted and faults.drop_watch_after and self.sent >= faults.drop_watch_after:
                await write(b"".join(out))
                raise Drop()
            if len(out) >= self.batch:
                await write(b"".join(out))
                out = []
        if out:
            await write(b"".join(out))

    def _line(self, event: Event) -> bytes:
        if self.form is Form.TABLE:
            meta = {"resourceVersion": str(event.rv)}
            rows = table(self.route.plural, [event.obj], meta, self.include)
            return _encode({"type": event.type, "object": rows}) + b"\n"
        return event.partial_line() if self.form is Form.PARTIAL else event.line()

    def _bookmark(self, rv: int, end: bool = False) -> bytes:
        meta: Obj = {"resourceVersion": str(rv)}
        if end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        if self.form is Form.PARTIAL:
            kind, api = "PartialObjectMetadata", "meta.k8s.io/v1"
        else:
            kind, api = self.route.info.kind, self.route.info.api_version
        obj = {"kind": kind, "apiVersion": api, "metadata": meta}
        return _encode({"type": "BOOKMARK", "object": obj}) + b"\n"


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
