"""CloudEvents output (SPEC section 5): every cluster-wide change as a CloudEvent 1.0 over HTTP.

Built on the ``cloudevents`` SDK (v2 ``cloudevents.core`` API) for the HTTP binding, binary mode
by default or structured. Delivery: a bounded queue that coalesces pending events per uid (the
latest state wins; a Create followed by Updates stays a Create; a Delete always survives), a few
concurrent senders each woken on its own, jittered exponential backoff on network errors and
404/408/409/429/5xx honouring Retry-After up to the backoff maximum; 3xx, 401/403 and other 4xx
are logged and counted, never retried. On shutdown what is queued is flushed within
``flush_timeout``.

Replicas: only the leader (``Role.LEADING``) sends; every replica remembers its recent changes
(coalesced per uid, pruned at the leader's watermark). The watermark is the resourceVersion up
to which everything this leader observed is delivered; it travels on the Lease. A new leader
sends what it remembers above the previous watermark, and a change of a reflector's first list
(an object that already existed) only when its resourceVersion is above it, as ``updated``.
Event ids are a function of the object version, so any duplicate carries the first one's id.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import random
import ssl
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
import trio
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from metacollector import metrics
from metacollector.changes import ObjectChange
from metacollector.events import Delta
from metacollector.kube.leader import Callbacks, LeaseRecord

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
    token_file: str | None = None  # bearer token (e.g. a projected SA token for the audience)
    replay: bool = False  # send objects of the first list as `replayed` instead of nothing
    recent_size: int = 20000  # uids remembered for a takeover (pruned at the leader's watermark)


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


def resource_version(value: str) -> int:
    """A resourceVersion as a number (etcd's revision, what API servers return); 0 if not one.

    Kubernetes calls resourceVersions opaque; comparing them is only used for the watermark,
    and an unparsable one counts as 0 (never above a watermark: not replayed, not skipped live).
    """
    try:
        return int(value)
    except ValueError:
        return 0


def event_id(change: ObjectChange) -> str:
    """The CloudEvent id: a function of the object version, the same on every replica and run.

    Create and Update of one version share it (a coalesced Create and a replayed Update of the
    same state are one event to a consumer); the content is hashed too because a pod's refs can
    change without its resourceVersion changing. A deletion happens once per uid.
    """
    h = hashlib.sha256()
    if change.reason == "Delete":
        parts: tuple[bytes, ...] = (change.kind.encode(), change.uid.encode(), b"Delete")
    else:
        refs = json.dumps(change.refs, sort_keys=True, separators=(",", ":")).encode()
        parts = (
            change.kind.encode(),
            change.uid.encode(),
            change.version.encode(),
            change.meta,
            change.status or b"",
            refs,
        )
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.hexdigest()[:32]


def to_cloudevent(
    change: ObjectChange,
    source: str,
    overrides: Mapping[str, str] = {},
    replayed: bool = False,
) -> CloudEvent:
    past = "replayed" if replayed else PAST_TENSE[change.reason]
    attributes: dict[str, Any] = {
        "id": event_id(change),
        "type": f"io.falco.metacollector.{change.kind.lower()}.{past}.v1",
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
    pending Create stays a Create (the receiver has not seen the object yet; it keeps its
    cause so the watermark stays below it), Delete wins."""
    if newer.reason == "Update" and pending.reason == "Create":
        return replace(newer, reason="Create", cause_version=pending.cause_version)
    return newer


class Role(enum.Enum):
    """Whether this replica sends (leader, or no leader election) or only remembers."""

    STANDBY = "standby"
    LEADING = "leading"


@dataclass(slots=True)
class Recent:
    """A remembered change (the latest per uid) for a takeover."""

    change: ObjectChange
    cause: int  # resourceVersion of the watch event that caused it
    created: int  # cause of a live Create coalesced into it, 0 if none


class BearerToken:
    """A token file read again whenever it changes on disk (kubelet rotates projected tokens
    by swapping a symlink), so a rotated token is used without a restart."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def header(self) -> str | None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8") as f:
                    self._token = f.read().strip()
                self._stamp = stamp
        except OSError as exc:
            if self._stamp is not None or not self._token:
                log.warning(
                    "cloudevents token file unreadable",
                    extra={"path": self.path, "error": str(exc)},
                )
            self._stamp = None
        return f"Bearer {self._token}" if self._token else None


class CloudEventsSink:
    def __init__(self, settings: SinkSettings, elected: bool = False) -> None:
        """``elected``: one of several replicas under leader election (starts standing by and
        remembers recent changes for a takeover); otherwise the only sender, from the start."""
        self.settings = settings
        self.elected = elected
        self.role = Role.STANDBY if elected else Role.LEADING
        self.pending: OrderedDict[str, ObjectChange] = OrderedDict()
        self.in_flight: dict[str, ObjectChange] = {}
        self.replays: set[str] = set()  # uids whose pending change is a replay
        self.recent: OrderedDict[str, Recent] = OrderedDict()
        self.baseline: int | None = None  # the previous leader's watermark, when we took over
        self.observed = 0  # highest cause resourceVersion offered
        self.forgotten = 0  # highest cause pushed out of ``recent`` by its size bound
        self.stopped = trio.Event()  # set once the shutdown flush is over
        self._lot = trio.lowlevel.ParkingLot()  # idle senders, each woken on its own
        self._deliveries: set[trio.CancelScope] = set()
        self._token = BearerToken(settings.token_file) if settings.token_file else None
        self._rng = random.Random()
        metrics.CE_QUEUE_DEPTH.set_function(lambda: len(self.pending))

    # --- producer side (the hub): never blocks ------------------------------------------------
    def offer(self, change: ObjectChange) -> None:
        s = self.settings
        cause = resource_version(change.cause_version)
        if cause > self.observed:
            self.observed = cause
        if s.kinds is not None and change.kind not in s.kinds:
            return
        if s.namespaces is not None and change.namespace and change.namespace not in s.namespaces:
            return
        if self.elected:
            self._remember(change, cause)
        if self.role is Role.LEADING:
            self._admit(change, cause, live=True)

    def progress(self, deltas: Sequence[Delta]) -> None:
        """The hub applied these watch events: the watermark may pass them even where they
        changed nothing we send (else a first list would see them above it)."""
        for delta in deltas:
            cause = resource_version(delta.obj.metadata.resourceVersion)
            if cause > self.observed:
                self.observed = cause

    def _remember(self, change: ObjectChange, cause: int) -> None:
        """Keep the latest state per uid. Its cause is the highest of the changes merged into
        it: a first-list refresh of a pod (caused by an older Service) must not hide that the
        pod itself changed above the watermark. Once a live change is in, it is not initial."""
        recent = self.recent
        old = recent.pop(change.uid, None)
        created = 0
        if change.reason == "Create" and not change.initial:
            created = cause
        elif old is not None:
            cause = max(cause, old.cause)
            if change.reason == "Update":
                created = old.created
            if change.initial and not old.change.initial:
                change = replace(change, initial=False)
        recent[change.uid] = Recent(change, cause, created)
        if len(recent) > self.settings.recent_size:
            _, oldest = recent.popitem(last=False)
            self.forgotten = max(self.forgotten, oldest.cause)

    def _admit(self, change: ObjectChange, cause: int, live: bool) -> None:
        """Queue a change unless the sink already has it (the baseline rule). A change of a uid
        already queued always joins it, so what is sent is the latest state."""
        base = self.baseline
        uid = change.uid
        queued = uid in self.pending
        replay = False
        if change.initial:
            if base is None or cause <= base:  # existed, and was delivered (or never asked)
                if uid in self.replays or (not queued and self.settings.replay):
                    replay = True
                elif not queued:
                    metrics.CE_SKIPPED.labels("existed").inc()
                    return
            else:  # changed while no replica was delivering (created or updated: unknown)
                change = replace(change, reason="Update")
        elif (
            base is not None
            and cause <= base
            and not queued
            and not (live and change.reason == "Delete")
        ):
            metrics.CE_SKIPPED.labels("delivered").inc()
            return
        self._enqueue(change, replay)

    def _enqueue(self, change: ObjectChange, replay: bool = False) -> None:
        existing = self.pending.get(change.uid)
        if existing is not None:
            self.pending[change.uid] = coalesce(existing, change)
        else:
            if len(self.pending) >= self.settings.queue_size:
                self._drop_one()
            self.pending[change.uid] = change
        if replay:
            self.replays.add(change.uid)
        elif self.replays:
            self.replays.discard(change.uid)
        if self._lot:  # an idle sender: wake one (unpark on an empty lot still costs ~1 us)
            self._lot.unpark()

    def _drop_one(self) -> None:
        """Queue full: drop the oldest pending non-Delete (final Deletes are kept if possible)."""
        victim = next((uid for uid, c in self.pending.items() if c.reason != "Delete"), None)
        if victim is None:
            victim = next(iter(self.pending))
        del self.pending[victim]
        self.replays.discard(victim)
        metrics.CE_DROPPED.labels("queue_full").inc()

    # --- leadership ---------------------------------------------------------------------------
    def lead(self, baseline: int | None) -> None:
        """Start sending: what we remember above ``baseline`` (the previous leader's watermark;
        None when no leader ever recorded one), then every new change."""
        self.baseline = baseline
        self.role = Role.LEADING
        if baseline is not None and self.forgotten > baseline:
            metrics.CE_DROPPED.labels("forgotten").inc()
            log.warning(
                "changes since the last leader's watermark were forgotten (recent-size bound)",
                extra={"watermark": baseline, "forgotten_up_to": self.forgotten},
            )
        for entry in list(self.recent.values()):
            change = entry.change
            if entry.created and (baseline is None or entry.created > baseline):
                change = replace(change, reason="Create")
            self._admit(change, entry.cause, live=False)
        log.info(
            "cloudevents leading",
            extra={"watermark": baseline, "queued": len(self.pending)},
        )

    def stand_by(self) -> None:
        """Stop sending (leadership lost): drop the queue, cancel requests in flight. The new
        leader sends them: our last watermark on the Lease is below each of them."""
        self.role = Role.STANDBY
        self.baseline = None
        self.pending.clear()
        self.replays.clear()
        for scope in self._deliveries:
            scope.cancel()
        log.info("cloudevents standing by")

    def watermark(self) -> int | None:
        """While leading: every change observed with a cause at or below it is delivered (or
        given up on). None while standing by or before anything was observed."""
        if self.role is not Role.LEADING:
            return None
        causes = [resource_version(c.cause_version) for c in self.pending.values()]
        causes.extend(resource_version(c.cause_version) for c in self.in_flight.values())
        if causes:
            return min(causes) - 1
        mark = max(self.observed, self.baseline or 0)
        return mark or None

    def forget_through(self, watermark: int) -> None:
        """Drop remembered changes the leader has delivered (its watermark covers them)."""
        recent = self.recent
        while recent:
            uid, entry = next(iter(recent.items()))
            if entry.cause > watermark:
                return
            del recent[uid]

    # --- delivery ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        verify: ssl.SSLContext | bool = True
        if s.ca_file:
            verify = ssl.create_default_context(cafile=s.ca_file)
        try:
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
                            "cloudevents not flushed at shutdown",
                            extra={"pending": len(self.pending)},
                        )
        finally:
            self.stopped.set()

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
                await self._lot.park()
                continue
            uid = change.uid
            replay = uid in self.replays
            self.replays.discard(uid)
            self.in_flight[uid] = change
            try:
                with trio.CancelScope() as scope:  # cancelled when leadership is lost
                    self._deliveries.add(scope)
                    await self._deliver(client, change, replay=replay)
            except trio.Cancelled:  # shutting down mid-delivery: leave it for the flush
                if self.role is Role.LEADING:
                    newer = self.pending.pop(uid, None)
                    self.pending[uid] = coalesce(change, newer) if newer else change
                    self.pending.move_to_end(uid, last=False)
                raise
            finally:
                self._deliveries.discard(scope)
                del self.in_flight[uid]
                if uid in self.pending:
                    self._lot.unpark()

    async def _flush(self, client: httpx.AsyncClient) -> None:
        while (change := self._next()) is not None:
            replay = change.uid in self.replays
            self.replays.discard(change.uid)
            await self._deliver(client, change, attempts=1, replay=replay)

    async def _deliver(
        self,
        client: httpx.AsyncClient,
        change: ObjectChange,
        attempts: int | None = None,
        replay: bool = False,
    ) -> None:
        s = self.settings
        event = to_cloudevent(change, s.source, s.overrides, replayed=replay)
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
            headers = dict(message.headers)
            if self._token is not None and (bearer := self._token.header()) is not None:
                headers["Authorization"] = bearer
            try:
                response = await client.post(s.url, headers=headers, content=message.body)
            except httpx.HTTPError as exc:
                wait = delay
                why = f"network: {type(exc).__name__}"
            else:
                code = response.status_code
                if 200 <= code < 300:
                    metrics.CE_SENT.labels(event.get_type()).inc()
                    metrics.CE_LATENCY.observe(max(0.0, trio.current_time() - change.observed_at))
                    return
                if code not in RETRYABLE and code < 500:
                    self._rejected(response, event, change)
                    return
                wait = max(delay, _retry_after(response))
                why = f"HTTP {code}"
            log.info("cloudevent delivery retry", extra={"why": why, "attempt": attempt + 1})
            await trio.sleep(backoff_wait(wait, s.backoff_max, self._rng.random()))
            delay = min(s.backoff_max, delay * 2)
        metrics.CE_FAILED.labels("retries_exhausted").inc()
        log.warning(
            "cloudevent given up", extra={"type": event.get_type(), "subject": subject(change)}
        )

    def _rejected(self, response: httpx.Response, event: CloudEvent, change: ObjectChange) -> None:
        """A final answer other than 2xx: count it by reason, say what an operator can do."""
        code = response.status_code
        fields: dict[str, Any] = {
            "status": code,
            "type": event.get_type(),
            "subject": subject(change),
        }
        if code in (401, 403):
            metrics.CE_FAILED.labels("unauthorized").inc()
            fields["token_file"] = self.settings.token_file
            log.error(
                "cloudevents sink refused our identity: check --cloudevents-token-file and that "
                "the token's audience is the sink's (Knative: the Broker's audience)",
                extra=fields,
            )
        elif 300 <= code < 400:
            metrics.CE_FAILED.labels("http_3xx").inc()
            fields["location"] = response.headers.get("Location")
            log.warning(
                "cloudevents sink redirected (not followed): point the sink URL at the target",
                extra=fields,
            )
        else:
            metrics.CE_FAILED.labels("http_4xx").inc()
            log.warning("cloudevent rejected", extra=fields)


WATERMARK_ANNOTATION = "metacollector.falcosecurity.org/cloudevents-watermark"


def election_callbacks(sink: CloudEventsSink) -> Callbacks:
    """Leadership drives the sink; the sink's watermark travels on the Lease."""

    def watermark_of(record: LeaseRecord | None) -> int | None:
        if record is None or WATERMARK_ANNOTATION not in record.annotations:
            return None
        return resource_version(record.annotations[WATERMARK_ANNOTATION])

    def annotations() -> dict[str, str]:
        mark = sink.watermark()
        return {} if mark is None else {WATERMARK_ANNOTATION: str(mark)}

    def observed(record: LeaseRecord) -> None:
        mark = watermark_of(record)
        if mark is not None:
            sink.forget_through(mark)

    async def before_release() -> None:
        await sink.stopped.wait()

    return Callbacks(
        started=lambda previous: sink.lead(watermark_of(previous)),
        stopped=sink.stand_by,
        annotations=annotations,
        observed=observed,
        before_release=before_release,
    )


def backoff_wait(wait: float, maximum: float, unit: float) -> float:
    """A jittered wait (0.5x..1.5x) never above ``maximum``: a Retry-After of "inf", a huge
    number or a date far ahead must not stop delivery."""
    return min(maximum, wait * (0.5 + unit))


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After")
    if not value:
        return 0.0
    try:
        seconds = float(value)
        return seconds if seconds > 0.0 else 0.0  # NaN and negatives: no wait of its own
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return 0.0
