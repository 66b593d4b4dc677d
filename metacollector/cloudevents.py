"""CloudEvents output (SPEC section 5): every cluster-wide change as a CloudEvent 1.0 over HTTP.

Built on the ``cloudevents`` SDK (v2 ``cloudevents.core`` API) for the HTTP binding, binary mode
by default or structured. Delivery: a bounded queue that coalesces pending events per uid (the
latest state wins; a Create followed by Updates stays a Create; a Delete always survives), a few
concurrent senders, jittered exponential backoff on network errors and 404/408/409/429/5xx
honouring Retry-After; other 4xx are logged and counted, never retried. On shutdown what is
queued is flushed within ``flush_timeout``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
import trio
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from metacollector import metrics
from metacollector.changes import ObjectChange

log = logging.getLogger("metacollector.cloudevents")

RETRYABLE = frozenset({404, 408, 409, 429})
PAST_TENSE = {"Create": "created", "Update": "updated", "Delete": "deleted"}
API_PATHS = {
    "Pod": "/api/v1",
    "Namespace": "/api/v1",
    "Service": "/api/v1",
    "ReplicationController": "/api/v1",
    "Deployment": "/apis/apps/v1",
    "ReplicaSet": "/apis/apps/v1",
    "DaemonSet": "/apis/apps/v1",
}
PLURALS = {
    "Pod": "pods",
    "Namespace": "namespaces",
    "Service": "services",
    "ReplicationController": "replicationcontrollers",
    "Deployment": "deployments",
    "ReplicaSet": "replicasets",
    "DaemonSet": "daemonsets",
}


class SinkConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SinkSettings:
    url: str
    source: str
    mode: Literal["binary", "structured"] = "binary"
    kinds: frozenset[str] | None = None  # only these kinds (None: all)
    namespaces: frozenset[str] | None = None  # only these namespaces; cluster-scoped kinds pass
    ca_file: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)  # K_CE_OVERRIDES extensions
    queue_size: int = 10000
    senders: int = 4
    flush_timeout: float = 5.0
    max_attempts: int = 10
    backoff_initial: float = 0.2
    backoff_max: float = 30.0
    request_timeout: float = 10.0


def settings_from_env(url_flag: str | None, source: str, **options: Any) -> SinkSettings | None:
    """--cloudevents-sink, else K_SINK; K_CE_OVERRIDES extensions. None when no sink."""
    url = url_flag or os.environ.get("K_SINK")
    if not url:
        return None
    overrides: dict[str, str] = {}
    raw = os.environ.get("K_CE_OVERRIDES")
    if raw:
        try:
            doc = json.loads(raw)
            overrides = {str(k): str(v) for k, v in (doc.get("extensions") or {}).items()}
        except (ValueError, AttributeError):
            raise SinkConfigError(
                f"K_CE_OVERRIDES is not valid JSON with 'extensions': {raw[:100]!r}"
            ) from None
    return SinkSettings(url=url, source=source, overrides=overrides, **options)


def subject(change: ObjectChange) -> str:
    base = API_PATHS[change.kind]
    if change.kind == "Namespace":
        return f"{base}/namespaces/{change.name}"
    return f"{base}/namespaces/{change.namespace}/{PLURALS[change.kind]}/{change.name}"


def to_cloudevent(
    change: ObjectChange, source: str, overrides: Mapping[str, str] = {}
) -> CloudEvent:
    attributes: dict[str, Any] = {
        "type": f"io.falco.metacollector.{change.kind.lower()}.{PAST_TENSE[change.reason]}.v1",
        "source": source,
        "subject": subject(change),
        "datacontenttype": "application/json",
        "k8skind": change.kind,
        "k8snamespace": change.namespace,
        "k8sname": change.name,
        "k8suid": change.uid,
    }
    if change.kind == "Pod":
        attributes["k8snode"] = change.node
    attributes.update(overrides)
    data: dict[str, Any] = {
        "reason": change.reason,
        "kind": change.kind,
        "uid": change.uid,
        "meta": json.loads(change.meta),
        "status": json.loads(change.status) if change.status is not None else None,
        "refs": change.refs,
    }
    return CloudEvent(attributes, data)


def coalesce(pending: ObjectChange, newer: ObjectChange) -> ObjectChange:
    """Merge a newer change of the same uid into a pending one: the latest state wins, a
    pending Create stays a Create (the receiver has not seen the object yet), Delete wins."""
    if newer.reason == "Update" and pending.reason == "Create":
        return replace(newer, reason="Create")
    return newer


class CloudEventsSink:
    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.pending: OrderedDict[str, ObjectChange] = OrderedDict()
        self.in_flight: set[str] = set()
        self._wake = trio.Event()
        self._rng = random.Random()
        metrics.CE_QUEUE_DEPTH.set_function(lambda: len(self.pending))

    # --- producer side (the hub): never blocks ------------------------------------------------
    def offer(self, change: ObjectChange) -> None:
        s = self.settings
        if s.kinds is not None and change.kind not in s.kinds:
            return
        if s.namespaces is not None and change.namespace and change.namespace not in s.namespaces:
            return
        existing = self.pending.get(change.uid)
        if existing is not None:
            self.pending[change.uid] = coalesce(existing, change)
        else:
            if len(self.pending) >= s.queue_size:
                self._drop_one()
            self.pending[change.uid] = change
        self._wake.set()

    def _drop_one(self) -> None:
        """Queue full: drop the oldest pending non-Delete (final Deletes are kept if possible)."""
        victim = next((uid for uid, c in self.pending.items() if c.reason != "Delete"), None)
        if victim is None:
            victim = next(iter(self.pending))
        del self.pending[victim]
        metrics.CE_DROPPED.labels("queue_full").inc()

    # --- delivery ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        verify: ssl.SSLContext | bool = True
        if s.ca_file:
            verify = ssl.create_default_context(cafile=s.ca_file)
        async with httpx.AsyncClient(verify=verify, timeout=s.request_timeout) as client:
            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(s.senders):
                        nursery.start_soon(self._sender, client)
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + s.flush_timeout
                    await self._flush(client)
                if self.pending:
                    metrics.CE_DROPPED.labels("shutdown").inc(len(self.pending))
                    log.warning(
                        "cloudevents not flushed at shutdown", extra={"pending": len(self.pending)}
                    )

    def _next(self) -> ObjectChange | None:
        for uid, change in self.pending.items():
            if uid not in self.in_flight:
                del self.pending[uid]
                return change
        return None

    async def _sender(self, client: httpx.AsyncClient) -> None:
        while True:
            change = self._next()
            if change is None:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            self.in_flight.add(change.uid)
            try:
                await self._deliver(client, change)
            except trio.Cancelled:  # shutting down mid-delivery: leave it for the flush
                newer = self.pending.pop(change.uid, None)
                self.pending[change.uid] = coalesce(change, newer) if newer else change
                self.pending.move_to_end(change.uid, last=False)
                raise
            finally:
                self.in_flight.discard(change.uid)
                if change.uid in self.pending:
                    self._wake.set()

    async def _flush(self, client: httpx.AsyncClient) -> None:
        while (change := self._next()) is not None:
            await self._deliver(client, change, attempts=1)

    async def _deliver(
        self, client: httpx.AsyncClient, change: ObjectChange, attempts: int | None = None
    ) -> None:
        s = self.settings
        event = to_cloudevent(change, s.source, s.overrides)
        message = (
            ce_http.to_structured_event(event)
            if s.mode == "structured"
            else ce_http.to_binary_event(event)
        )
        delay = s.backoff_initial
        for attempt in range(attempts or s.max_attempts):
            if attempt:
                newer = self.pending.pop(change.uid, None)
                if newer is not None:  # superseded while we were retrying
                    self.pending[change.uid] = coalesce(change, newer)
                    self.pending.move_to_end(change.uid, last=False)
                    return
                metrics.CE_RETRIED.inc()
            try:
                response = await client.post(s.url, headers=message.headers, content=message.body)
            except httpx.HTTPError as exc:
                wait = delay
                why = f"network: {type(exc).__name__}"
            else:
                if 200 <= response.status_code < 300:
                    metrics.CE_SENT.labels(event.get_type()).inc()
                    metrics.CE_LATENCY.observe(max(0.0, trio.current_time() - change.observed_at))
                    return
                if response.status_code not in RETRYABLE and response.status_code < 500:
                    metrics.CE_FAILED.labels("http_4xx").inc()
                    log.warning(
                        "cloudevent rejected",
                        extra={
                            "status": response.status_code,
                            "type": event.get_type(),
                            "subject": subject(change),
                        },
                    )
                    return
                wait = max(delay, _retry_after(response))
                why = f"HTTP {response.status_code}"
            log.info("cloudevent delivery retry", extra={"why": why, "attempt": attempt + 1})
            await trio.sleep(wait * (0.5 + self._rng.random()))
            delay = min(s.backoff_max, delay * 2)
        metrics.CE_FAILED.labels("retries_exhausted").inc()
        log.warning(
            "cloudevent given up", extra={"type": event.get_type(), "subject": subject(change)}
        )


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After")
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return 0.0
