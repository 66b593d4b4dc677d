"""Reflectors: one trio task per watched kind, list then watch, never losing or duplicating state.

Like client-go's reflector: a paginated list hands its difference against the reflector's own
store (uid -> object) to the hub, then a watch resumes from the last resourceVersion (bookmarks
included). A clean end or a dropped connection resumes the watch without a relist; only 410
Expired (as HTTP status or an in-band ERROR) relists, and then only the difference is handed on:
DELETED for vanished objects, MODIFIED for changed ones, nothing for the unchanged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx
import msgspec
import trio

from metacollector import metrics
from metacollector.events import WATCH_TYPES, Delta, WatchType
from metacollector.kube.auth import CredentialError
from metacollector.kube.config import KubeConfigError
from metacollector.kube.resources import INITIAL_EVENTS_END, Resource
from metacollector.kube.shapes import (
    Reason,
    accepted_kinds,
    checked_type,
    kind_of,
    plain,
    refusal,
    undecodable,
)
from metacollector.kube.stream import (
    LineTooLong,
    TruncatedLine,
    WatchDecoder,
    decode_bookmark,
    decode_event,
    decode_status,
    missing,
)
from metacollector.model import Object

log = logging.getLogger("metacollector.kube.reflector")


T = TypeVar("T", bound=Object)

# Objects a relist compares, and deltas it hands on at once, between checkpoints (~1-2 ms).
REPLACE_SLICE = 2000
# Objects of a list page made into model objects between checkpoints (~2 ms; a page is 500).
ACCEPT_SLICE = 100

_WATCH_TYPE: dict[str, WatchType] = {t: t for t in WATCH_TYPES}


class Expired(Exception):
    """410 Gone / Expired: the resourceVersion is too old; relist."""


class Throttled(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(f"429 Too Many Requests, retry after {delay:.1f}s")
        self.delay = delay


class APIError(Exception):
    """Any other failed request or broken stream: back off and retry."""


class MalformedResponse(Exception):
    """A watch line that is not a watch event, or a list page that is not a list: start again
    (the watch from the last good rv, the list from its first page) after a backoff."""


class NoStreamingList(Exception):
    """The server refused sendInitialEvents: fall back to list + watch."""


@dataclass
class Backoff:
    """client-go's: 0.8 s doubling to 30 s, with jitter, reset after 2 min without failure."""

    initial: float = 0.8
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 1.0
    reset_after: float = 120.0
    _current: float = 0.0
    _last_failure: float = -1e9

    def reset(self) -> None:
        self._current = 0.0

    def next(self, now: float, rng: random.Random) -> float:
        if now - self._last_failure > self.reset_after:
            self._current = 0.0
        self._last_failure = now
        self._current = min(
            self.maximum, self._current * self.factor if self._current else self.initial
        )
        return self._current * (1 + rng.random() * self.jitter)


class ListMeta(msgspec.Struct):
    resourceVersion: str = ""
    # "continue" is a Python keyword
    continue_: str = msgspec.field(default="", name="continue")


class Page(msgspec.Struct, Generic[T]):
    """One page of a list response, its items decoded as ``T``."""

    metadata: ListMeta = msgspec.field(default_factory=ListMeta)
    items: list[T] | None = None


class RawPage(msgspec.Struct):
    """A list page whose items are kept undecoded (to decode them one by one)."""

    metadata: ListMeta = msgspec.field(default_factory=ListMeta)
    items: list[msgspec.Raw] | None = None


def _retry_after(response: httpx.Response) -> float:
    try:
        values = response.headers.get_list("Retry-After")
        return max(0.0, float(values[0] if values else "1"))
    except ValueError:
        return 1.0


def _check(response: httpx.Response, body: bytes | None = None) -> None:
    code = response.status_code
    if code == 200:
        return
    if code == 410:
        raise Expired("410 Gone")
    if code == 429:
        raise Throttled(_retry_after(response))
    text = (body or b"")[:300].decode(errors="replace")
    raise APIError(f"HTTP {code}: {text}")


class Reflector(Generic[T]):
    def __init__(
        self,
        client: httpx.AsyncClient,
        resource: Resource,
        item_type: type[T],
        out: trio.MemorySendChannel[Sequence[Delta]],
        *,
        prepare: Callable[[T], T] | None = None,
        page_size: int = 500,
        watch_timeout: tuple[int, int] = (300, 600),
        streaming_list: bool = False,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        max_line_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.resource = resource
        self.kind = resource.kind
        self.out = out
        self.prepare = prepare
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.streaming_list = streaming_list
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.max_line_bytes = max_line_bytes
        self.store: dict[str, T] = {}
        self.rv = ""
        self.synced = trio.Event()
        self.relisting_since: float | None = None
        self.relists = 0
        self.watch_restarts = 0
        # Objects are decoded with their kind, checked (kube/shapes.py), then handed on as
        # ``item_type``; a page that fails as a whole is decoded again item by item.
        self.item_type = item_type
        self._kinds = accepted_kinds(resource)
        checked = checked_type(item_type)
        self._item: msgspec.json.Decoder[T] = msgspec.json.Decoder(checked)
        self._page: msgspec.json.Decoder[Page[T]] = msgspec.json.Decoder(
            Page[checked]  # type: ignore[valid-type]
        )
        self._raw_page = msgspec.json.Decoder(RawPage)
        # upstream's labels: name=pod-collector..., type=create|update|delete (generic stays 0)
        self._counters = {
            t: metrics.API_SERVER_EVENTS.labels(
                metrics.collector_name(self.kind), metrics.API_SERVER_SOURCE, label
            )
            for t, label in zip(WATCH_TYPES, ("create", "update", "delete"), strict=True)
        }

    async def run(self) -> None:
        """List, then watch, forever (until cancelled)."""
        cause = "initial"
        need_list = True
        metrics.REFLECTOR_SYNCED.labels(self.resource.plural).set(0)
        while True:
            progress_mark = self.rv
            try:
                if need_list:
                    await self._relist(cause)
                    need_list = False
                await self._watch()
                self._restart("ended")  # clean end (timeoutSeconds): resume at once
                continue
            except Expired:
                need_list, cause = True, "expired"
                self._restart("expired")
                continue
            except Throttled as exc:
                # Honour Retry-After as client-go does; a storm of "Retry-After: 0" gets the
                # backoff instead of a busy loop.
                delay = exc.delay
                if delay < 1:
                    delay = max(delay, self.backoff.next(trio.current_time(), self.rng))
                why = "throttled"
            except MalformedResponse as exc:
                if self.rv != progress_mark:
                    self.backoff.reset()
                delay, why = self.backoff.next(trio.current_time(), self.rng), "malformed"
                log.warning("malformed watch line", extra=self._fields(error=str(exc)))
            except (
                APIError,
                httpx.TransportError,
                TruncatedLine,
                LineTooLong,
                CredentialError,  # a failing exec plugin or unreadable token file: retry
                KubeConfigError,
            ) as exc:
                # A watch that delivered events before it broke was healthy: start the backoff
                # afresh rather than letting periodic drops push it to 30 s (client-go would).
                if self.rv != progress_mark:
                    self.backoff.reset()
                delay, why = self.backoff.next(trio.current_time(), self.rng), "error"
                log.warning("watch failed", extra=self._fields(error=str(exc)[:300]))
            # A streaming list that delivered its initial events and then broke has listed:
            # resume its watch from the last rv instead of listing again.
            need_list = need_list and self.relisting_since is not None
            self._restart(why, delay)
            await trio.sleep(delay)

    def _fields(self, **extra: object) -> dict[str, object]:
        return {"resource": self.resource.plural, "resourceVersion": self.rv, **extra}

    def _restart(self, cause: str, delay: float = 0.0) -> None:
        self.watch_restarts += 1
        metrics.WATCH_RESTARTS.labels(self.resource.plural, cause).inc()
        log.info("watch restart", extra=self._fields(cause=cause, delay=round(delay, 2)))

    # --- list --------------------------------------------------------------------------------
    async def _relist(self, cause: str) -> None:
        """One relist attempt; ``relisting_since`` stays set across failed attempts (readiness
        turns false while a relist takes longer than its grace period) until one succeeds."""
        if self.relisting_since is None:
            self.relisting_since = trio.current_time()
            if cause != "initial":
                self.relists += 1
                metrics.RELISTS.labels(self.resource.plural, cause).inc()
                log.info("relist", extra=self._fields(cause=cause))
        if self.streaming_list:
            try:
                await self._watch(initial=True)
                return
            except NoStreamingList:
                log.info("streaming list refused, using list", extra=self._fields())
                self.streaming_list = False
        items, rv = await self._list()
        await self._replace(items, rv)

    async def _list(self) -> tuple[dict[str, T], str]:
        items: dict[str, T] = {}
        cont = ""
        headers = {"Accept": self.resource.accept(watch=False)}
        while True:
            params: dict[str, str | int] = {"limit": self.page_size}
            if cont:
                params["continue"] = cont
            response = await self.client.get(self.resource.path, params=params, headers=headers)
            if response.status_code == 410 and cont:  # continue token expired: start over
                items, cont = {}, ""
                continue
            _check(response, response.content)
            checked: Sequence[T]
            try:
                page = self._page.decode(response.content)
                meta, checked = page.metadata, page.items or ()
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                meta, checked = self._page_items(response.content, exc)
            for accepted, item in enumerate(checked, 1):
                obj = self._accept(item)
                if obj is not None:
                    items[obj.metadata.uid] = obj
                if accepted % ACCEPT_SLICE == 0:
                    await trio.lowlevel.checkpoint()
            cont = meta.continue_
            if not cont:
                return items, meta.resourceVersion

    def _page_items(self, content: bytes, error: Exception) -> tuple[ListMeta, list[T]]:
        """A list page whose items did not all decode: its metadata, and the items that did
        (the others refused). A page that is not a list at all is a MalformedResponse."""
        try:
            page = self._raw_page.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise MalformedResponse(f"list page: {error}") from None
        decoded: list[T] = []
        for raw in page.items or ():
            try:
                decoded.append(self._item.decode(raw))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                reason = undecodable(bytes(raw))
                if reason is None:  # corrupt bytes, not a shape: fetch the page again
                    raise MalformedResponse(f"list page: {error}") from None
                self._refuse(reason, error=str(exc)[:200])
        return page.metadata, decoded

    def _accept(self, checked: T) -> T | None:
        """The model object of a decoded, kind-carrying object; None (refused) when it has a
        shape an API server never sends."""
        reason = refusal(self.resource, self._kinds, kind_of(checked), checked)
        if reason is not None:
            meta = checked.metadata
            self._refuse(reason, uid=meta.uid, object_name=meta.name, namespace=meta.namespace)
            return None
        obj = plain(self.item_type, checked)
        return self.prepare(obj) if self.prepare else obj

    def _refuse(self, reason: Reason, **fields: object) -> None:
        """Count and report (rate-limited per resource and reason) one refused object."""
        metrics.OBJECTS_REFUSED.labels(self.resource.plural, reason.value).inc()
        log.warning("object refused", extra=self._fields(cause=reason.value, **fields))

    async def _replace(self, items: dict[str, T], rv: str) -> None:
        """Hand on the difference between the store and a fresh list; adopt the list. Compares
        ``REPLACE_SLICE`` objects between checkpoints: in one piece, a relist held the event
        loop for a time growing with the cluster (bench/README.md, Complexity, "A whole list")."""
        store = self.store
        initial = not self.synced.is_set()
        deltas: list[Delta] = []
        added = 0
        for compared, (uid, obj) in enumerate(items.items(), 1):
            old = store.get(uid)
            if old is None:
                added += 1
                deltas.append(Delta("ADDED", self.kind, obj, initial=initial))
            elif old.metadata.resourceVersion != obj.metadata.resourceVersion:
                deltas.append(Delta("MODIFIED", self.kind, obj))
            if compared % REPLACE_SLICE == 0:
                await trio.lowlevel.checkpoint()
        changed = len(deltas)
        for compared, (uid, old) in enumerate(store.items(), 1):
            if uid not in items:
                deltas.append(Delta("DELETED", self.kind, old))
            if compared % REPLACE_SLICE == 0:
                await trio.lowlevel.checkpoint()
        self.store = items
        self.rv = rv
        # a list's objects count as events, as an informer's do
        counted: tuple[tuple[WatchType, int], ...] = (
            ("ADDED", added),
            ("MODIFIED", changed - added),
            ("DELETED", len(deltas) - changed),
        )
        for watch_type, count in counted:
            if count:
                self._counters[watch_type].inc(count)
        for start in range(0, len(deltas), REPLACE_SLICE):
            await self.out.send(deltas[start : start + REPLACE_SLICE])
        log.info(
            "listed",
            extra=self._fields(objects=len(items), changes=len(deltas)),
        )
        self.relisting_since = None
        self.synced.set()
        metrics.REFLECTOR_SYNCED.labels(self.resource.plural).set(1)

    # --- watch -------------------------------------------------------------------------------
    async def _watch(self, *, initial: bool = False) -> None:
        """One watch request; returns on a clean end. With ``initial``, a streaming list:
        collect the initial events until the initial-events-end bookmark, then keep watching."""
        timeout = self.rng.randint(*self.watch_timeout)
        params: dict[str, str] = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        if initial:
            params.update(sendInitialEvents="true", resourceVersionMatch="NotOlderThan")
            params["resourceVersion"] = ""
        else:
            params["resourceVersion"] = self.rv
        headers = {"Accept": self.resource.accept(watch=True)}
        pending: dict[str, T] | None = {} if initial else None
        with trio.move_on_after(timeout + 30):
            async with self.client.stream(
                "GET", self.resource.path, params=params, headers=headers
            ) as response:
                if initial and 400 <= response.status_code < 500 and response.status_code != 429:
                    raise NoStreamingList()
                if response.status_code != 200:
                    _check(response, await response.aread())
                decoder = WatchDecoder(self.max_line_bytes)
                async for chunk in response.aiter_bytes():
                    pending = await self._handle(decoder.feed(chunk), pending)
                decoder.end()

    async def _handle(
        self, lines: list[bytes], pending: dict[str, T] | None
    ) -> dict[str, T] | None:
        batch: list[Delta] = []
        try:
            for line in lines:
                try:
                    event = decode_event(line)
                    if event.type == "BOOKMARK":
                        rv, annotations = decode_bookmark(event.object)
                        end = pending is not None and annotations.get(INITIAL_EVENTS_END) == "true"
                        if not rv:
                            self._refuse(Reason.BOOKMARK_WITHOUT_RV)
                            if end:  # the list cannot be resumed from nowhere: list again
                                raise MalformedResponse("initial-events-end bookmark without an rv")
                        elif end:
                            assert pending is not None
                            await self._replace(pending, rv)
                            pending = None
                        else:
                            self.rv = rv
                        continue
                    if event.type == "ERROR":
                        status = decode_status(event.object)
                        if status.code == 410:
                            raise Expired(status.message)
                        raise APIError(
                            f"watch ERROR {status.code} {status.reason}: {status.message}"
                        )
                    watch_type = _WATCH_TYPE.get(event.type)
                    if watch_type is None:
                        raise MalformedResponse(f"unknown event type {event.type!r}")
                except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                    raise MalformedResponse(f"{exc}: {line[:200]!r}") from None
                if missing(event.object):
                    self._refuse(Reason.NO_OBJECT, type=event.type)
                    continue
                try:
                    checked = self._item.decode(event.object)
                except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                    reason = undecodable(bytes(event.object))
                    if reason is None:  # corrupt bytes, not a shape: watch again
                        raise MalformedResponse(f"{exc}: {line[:200]!r}") from None
                    self._refuse(reason, error=str(exc)[:200])
                    continue
                obj = self._accept(checked)
                if obj is None:
                    continue
                uid = obj.metadata.uid
                if pending is not None:  # still inside a streaming list's initial events
                    pending[uid] = obj
                    continue
                if watch_type == "DELETED":
                    self.store.pop(uid, None)
                else:
                    self.store[uid] = obj
                self.rv = obj.metadata.resourceVersion or self.rv
                self._counters[watch_type].inc()
                batch.append(Delta(watch_type, self.kind, obj))
        finally:
            if batch:
                await self.out.send(batch)
        return pending
