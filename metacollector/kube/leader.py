"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

``Elector`` is the sans-I/O state machine (client-go's ``tryAcquireOrRenew``): a Lease held by
someone else is respected for ``leaseDuration`` after we *observed* it change (our own clock, so
clock skew between replicas does not matter); taking it over bumps ``leaseTransitions`` and sets
``acquireTime``; a leader that cannot renew for ``renewDeadline`` stops leading, which is shorter
than ``leaseDuration`` so it has stopped before anyone else may start. Writes carry the observed
``resourceVersion``, so two candidates racing for one Lease get one 409 Conflict.

``run_election`` is the trio driver: GET, decide, POST/PUT over the project's httpx kube client,
every ``retryPeriod`` (jittered while following), release on a clean shutdown (holder cleared,
as client-go's ReleaseOnCancel) so a restarted or other replica takes over at once.
"""

from __future__ import annotations

import enum
import logging
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from metacollector import metrics

log = logging.getLogger("metacollector.kube.leader")

LEASE_DURATION = 15.0  # client-go / controller-runtime defaults
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0
JITTER_FACTOR = 1.2  # client-go's JitterFactor for the acquire loop
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class State(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease spec fields client-go uses, plus the Lease's annotations."""

    holder: str = ""
    lease_duration: int = int(LEASE_DURATION)  # seconds
    acquire_time: str | None = None  # MicroTime strings, kept as the server wrote them
    renew_time: str | None = None
    transitions: int = 0
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Write:
    """A write to try: create the Lease (``resource_version`` None) or update it."""

    record: LeaseRecord
    resource_version: str | None


@dataclass(frozen=True)
class ElectionConfig:
    identity: str
    namespace: str
    name: str
    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > JITTER_FACTOR * self.retry_period > 0:
            raise ValueError(
                "leader election needs lease-duration > renew-deadline > 1.2 x retry-period > 0"
            )


def default_identity() -> str:
    """client-go's convention: hostname (the pod name in a cluster) plus a unique suffix."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def micro_time(wall: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, in UTC."""
    return wall.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """client-go's LeaderElector decisions, fed with what the driver read and when."""

    def __init__(self, config: ElectionConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.state = State.FOLLOWER
        self.observed: LeaseRecord | None = None
        self.observed_rv = ""
        self.observed_at = 0.0  # our monotonic time when ``observed`` last changed
        self.last_renew = 0.0
        self._rng = rng or random.Random()

    def observe(self, record: LeaseRecord | None, resource_version: str, now: float) -> None:
        """The Lease as just read (None: it does not exist)."""
        if record != self.observed:
            self.observed, self.observed_at = record, now
        self.observed_rv = resource_version

    def decide(self, now: float, wall: datetime, annotations: Mapping[str, str]) -> Write | None:
        """The write that acquires or renews, or None while another holder's lease is valid.
        ``annotations`` are merged over the observed ones (which a new holder carries over)."""
        me = self.config.identity
        stamp = micro_time(wall)
        duration = int(self.config.lease_duration)
        rec = self.observed
        if rec is None:
            return Write(LeaseRecord(me, duration, stamp, stamp, 0, dict(annotations)), None)
        if rec.holder and rec.holder != me and self.observed_at + rec.lease_duration > now:
            return None
        merged = {**rec.annotations, **annotations}
        if rec.holder == me:
            record = LeaseRecord(me, duration, rec.acquire_time, stamp, rec.transitions, merged)
        else:
            record = LeaseRecord(me, duration, stamp, stamp, rec.transitions + 1, merged)
        return Write(record, self.observed_rv)

    def succeeded(self, record: LeaseRecord, resource_version: str, now: float) -> bool:
        """Our write was accepted; True when this starts our leadership."""
        self.observed, self.observed_rv, self.observed_at = record, resource_version, now
        self.last_renew = now
        if self.state is State.LEADER:
            return False
        self.state = State.LEADER
        return True

    def failed(self, now: float) -> bool:
        """An attempt did not renew (held elsewhere, conflict, error, timeout); True when this
        ends our leadership (nothing renewed for ``renew_deadline``)."""
        if self.state is State.LEADER and now - self.last_renew >= self.config.renew_deadline:
            self.state = State.FOLLOWER
            return True
        return False

    def must_stop_by(self) -> float:
        """While leading: when leadership ends unless renewed (a deadline for a hung request)."""
        return self.last_renew + self.config.renew_deadline

    def next_attempt(self, now: float) -> float:
        period = self.config.retry_period
        if self.state is State.LEADER:
            return now + period
        return now + period * (1 + self._rng.random() * JITTER_FACTOR)

    def release(self, wall: datetime, annotations: Mapping[str, str]) -> Write | None:
        """On a clean shutdown while leading: clear the holder (client-go's ReleaseOnCancel)."""
        rec = self.observed
        if self.state is not State.LEADER or rec is None:
            return None
        stamp = micro_time(wall)
        merged = {**rec.annotations, **annotations}
        return Write(LeaseRecord("", 1, stamp, stamp, rec.transitions, merged), self.observed_rv)


# --- the Lease object on the wire -------------------------------------------------------------
def parse_lease(doc: Mapping[str, Any]) -> tuple[LeaseRecord, str]:
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    record = LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
    )
    return record, str(meta.get("resourceVersion") or "")


def lease_body(config: ElectionConfig, write: Write) -> dict[str, Any]:
    rec = write.record
    meta: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if rec.annotations:
        meta["annotations"] = dict(rec.annotations)
    if write.resource_version is not None:
        meta["resourceVersion"] = write.resource_version
    spec: dict[str, Any] = {
        "holderIdentity": rec.holder,
        "leaseDurationSeconds": rec.lease_duration,
        "leaseTransitions": rec.transitions,
    }
    if rec.acquire_time:
        spec["acquireTime"] = rec.acquire_time
    if rec.renew_time:
        spec["renewTime"] = rec.renew_time
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": spec,
    }


@dataclass
class Callbacks:
    """What leadership means to the caller (all synchronous, on the trio thread)."""

    started: Callable[[LeaseRecord | None], None]  # the record we took over (None: new Lease)
    stopped: Callable[[], None]
    annotations: Callable[[], Mapping[str, str]] = dict  # written with every renew
    observed: Callable[[LeaseRecord], None] = lambda record: None  # every Lease read
    before_release: Callable[[], Awaitable[None]] | None = None  # e.g. wait for a final flush


async def run_election(
    client: httpx.AsyncClient,
    config: ElectionConfig,
    callbacks: Callbacks,
    *,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    task_status: trio.TaskStatus[Elector] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Campaign, lead and renew until cancelled; then release the Lease if we hold it."""
    elector = Elector(config)
    base = LEASES.format(namespace=config.namespace)
    path = f"{base}/{config.name}"
    metrics.LEADER.set(0)
    task_status.started(elector)
    log.info(
        "leader election",
        extra={"lease": f"{config.namespace}/{config.name}", "identity": config.identity},
    )

    async def attempt(now: float) -> bool:
        response = await client.get(path)
        if response.status_code == 404:
            elector.observe(None, "", now)
        elif response.status_code == 200:
            record, rv = parse_lease(response.json())
            elector.observe(record, rv, now)
            callbacks.observed(record)
        else:
            raise httpx.HTTPStatusError("get lease", request=response.request, response=response)
        previous = elector.observed
        leading = elector.state is State.LEADER
        write = elector.decide(now, wall_clock(), callbacks.annotations() if leading else {})
        if write is None:
            return False
        body = lease_body(config, write)
        if write.resource_version is None:
            response = await client.post(base, json=body)
        else:
            response = await client.put(path, json=body)
        if response.status_code not in (200, 201):
            if response.status_code != 409:  # a conflict is a lost race; anything else is not
                log.warning(
                    "lease write refused",
                    extra={"status": response.status_code, "body": response.text[:300]},
                )
            return False
        record, rv = parse_lease(response.json())
        if elector.succeeded(record, rv, trio.current_time()):
            metrics.LEADER.set(1)
            log.info(
                "became leader",
                extra={"identity": config.identity, "transitions": record.transitions},
            )
            callbacks.started(previous)
        return True

    try:
        while True:
            now = trio.current_time()
            deadline = now + config.retry_period
            if elector.state is State.LEADER:
                deadline = min(deadline, elector.must_stop_by())
            renewed = False
            with trio.move_on_at(deadline):
                try:
                    renewed = await attempt(now)
                except (httpx.HTTPError, ValueError) as exc:
                    log.info("lease attempt failed", extra={"error": str(exc)[:200]})
            if not renewed and elector.failed(trio.current_time()):
                metrics.LEADER.set(0)
                log.warning("leader election lost", extra={"identity": config.identity})
                callbacks.stopped()
            await trio.sleep_until(elector.next_attempt(now))
    finally:
        if elector.state is State.LEADER:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + config.renew_deadline
                if callbacks.before_release is not None:
                    await callbacks.before_release()
                write = elector.release(wall_clock(), callbacks.annotations())
                if write is not None:
                    try:
                        response = await client.put(path, json=lease_body(config, write))
                        log.info("leader lease released", extra={"status": response.status_code})
                    except httpx.HTTPError as exc:
                        log.warning("leader lease not released", extra={"error": str(exc)})
            elector.state = State.FOLLOWER
            metrics.LEADER.set(0)
