"""Every Prometheus metric of the process, defined in one place (SPEC section 4).

Upstream's metrics keep their exact names, label names and label values (``meta_collector_*``,
see the table in docs/operations.md) so the falcosecurity dashboard, alerts and recording rules
keep working; our own live under ``metacollector_``. All metrics register on ``REGISTRY`` so
tests and the HTTP server share one.

Upstream's counters have no ``_total`` suffix (Go's text format allows that; prometheus-client
always adds one to a counter, and OpenMetrics requires it). They are exported as one
*untyped* family each (``untyped`` in the text format, ``unknown`` in OpenMetrics) whose samples
carry the exact upstream name: one valid family per name in both formats, and the same series
names in Prometheus whichever format it negotiates. No ``_created`` series are exported.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric, UnknownMetricFamily

# no `*_created` series: upstream has none, and they double the number of series
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)


class UpstreamCounter:
    """A counter under its exact upstream (Go) name: values kept in a prometheus-client Counter
    (labels, thread safety), exported by :class:`_UpstreamFamilies` as an untyped family."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str]) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self._values = Counter(name, documentation, self.labelnames, registry=None)

    def labels(self, *values: str, **by_name: str) -> Counter:
        return self._values.labels(*values, **by_name)

    def family(self) -> Metric:
        family = UnknownMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for collected in self._values.collect():
            for sample in collected.samples:
                if sample.name.endswith("_total"):
                    family.add_metric([sample.labels[k] for k in self.labelnames], sample.value)
        return family


# --- upstream names -------------------------------------------------------------------------
SUBSCRIBERS = Gauge(
    "meta_collector_server_subscribers",
    "Number of subscribers.",
    registry=REGISTRY,
)
DISPATCHED_EVENTS = UpstreamCounter(
    "meta_collector_broker_dispatched_events",
    "Total number of events generated per resource kind destined to subscribers. kind label "
    "refers to the resource kind and type label refers to the event type, i.e. create, update, "
    "delete.",
    ["kind", "type"],
)
API_SERVER_EVENTS = UpstreamCounter(
    "meta_collector_collector_event_api_server_received",
    "Total number of events received from the api-server per collector. name label refers to "
    "the collector name, source to where the events come from, and type to the event type, "
    "i.e. create, update, delete, generic. The initial list counts as create.",
    ["name", "source", "type"],
)
QUEUE_ADDS = UpstreamCounter(
    "meta_collector_broker_queue_adds",
    "Total number of events handled by the queue: here, keys marked in subscriber mailboxes, "
    "by the type of the API change that marked them (initial syncs: Create).",
    ["name", "type"],
)
QUEUE_DURATION = Histogram(
    "meta_collector_broker_queue_duration_seconds",
    "How long in seconds an event stays in the queue before being requested: here, from a "
    "change reaching the reducer to its event being written to a subscriber.",
    ["name"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

# Upstream's label values (pkg/resource and pkg/events of falcosecurity/k8s-metacollector).
EVENT_TYPES: Final = ("Create", "Update", "Delete")
API_EVENT_TYPES: Final = ("create", "update", "delete", "generic")
API_SERVER_SOURCE: Final = "api-server"


def observe_all(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(amount)`` for each amount, taking each bucket's lock once per call
    rather than twice per amount: the gRPC senders observe every event of every batch, 634,768
    in a full-size initial sync (bench/README.md, Scale). Reads prometheus-client's histogram
    child internals (``_upper_bounds``, ``_buckets``, ``_sum``); tests/ops/test_metrics_batch.py
    checks it against ``observe``."""
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        total += amount
        counts[bisect.bisect_left(bounds, amount)] += 1
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


QUEUE_NAME: Final = "mailbox"  # upstream: "blockingChannel", its one broker queue


def collector_name(kind: str) -> str:
    """Upstream's collector name for a kind: ``pod-collector``, ``replicaset-collector``..."""
    return f"{kind.lower()}-collector"


# --- ours: Kubernetes access ----------------------------------------------------------------
WATCH_RESTARTS = Counter(
    "metacollector_watch_restarts",
    "Watch streams restarted, by resource and cause.",
    ["resource", "cause"],
    registry=REGISTRY,
)
RELISTS = Counter(
    "metacollector_relists",
    "Full relists of a resource, by cause.",
    ["resource", "cause"],
    registry=REGISTRY,
)
OBJECTS = Gauge(
    "metacollector_objects",
    "Objects held in the cluster state, per kind.",
    ["kind"],
    registry=REGISTRY,
)
REFLECTOR_SYNCED = Gauge(
    "metacollector_reflector_synced",
    "1 when the reflector of a resource has synced its initial list.",
    ["resource"],
    registry=REGISTRY,
)

# --- ours: subscribers and gRPC ---------------------------------------------------------------
MAILBOX_DEPTH = Gauge(
    "metacollector_mailbox_depth",
    "Resource keys waiting to be sent, summed over all subscribers.",
    registry=REGISTRY,
)
GC_PAUSE = Histogram(
    "metacollector_gc_pause_seconds",
    "Pauses of the cyclic garbage collector (every subscriber waits them out), by generation.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
GRPC_CONNECTIONS = Gauge(
    "metacollector_grpc_connections",
    "Open gRPC (HTTP/2) connections.",
    registry=REGISTRY,
)
GRPC_STREAMS_ENDED = Counter(
    "metacollector_grpc_streams_ended",
    "gRPC streams ended, by grpc-status code name.",
    ["code"],
    registry=REGISTRY,
)
LIMIT_HITS = Counter(
    "metacollector_limit_hits",
    "Requests or connections refused because a limit was reached.",
    ["limit"],
    registry=REGISTRY,
)
PROTOCOL_ERRORS = Counter(
    "metacollector_grpc_protocol_errors",
    "Connections closed because the peer broke the HTTP/2 or gRPC protocol.",
    ["reason"],
    registry=REGISTRY,
)

# --- ours: security (issue 19) ---------------------------------------------------------------
TLS_RELOADS = Counter(
    "metacollector_tls_reloads",
    "TLS files re-read after a change on disk, by what they are for and result (failed: the "
    "previous certificate is kept).",
    ["kind", "result"],
    registry=REGISTRY,
)
OBJECTS_REFUSED = Counter(
    "metacollector_objects_refused",
    "Objects or watch events refused because a real API server never sends them that way.",
    ["resource", "reason"],
    registry=REGISTRY,
)

# --- ours: departures (SPEC section 2, lifecycle) ---------------------------------------------
DEPARTURES_HELD = Gauge(
    "metacollector_departures_held",
    "Entries of the departure log: (node, object) pairs that left a node's view in the window.",
    registry=REGISTRY,
)
DEPARTURES_EVICTED = Counter(
    "metacollector_departures_evicted",
    "Departure log entries dropped before their window ended, by the cap that was reached.",
    ["cap"],
    registry=REGISTRY,
)
DEPARTURE_DELETES = Counter(
    "metacollector_departure_deletes",
    "Deletes queued on subscribe for objects that recently left the node's view.",
    registry=REGISTRY,
)

# --- ours: CloudEvents ------------------------------------------------------------------------
CE_SENT = Counter(
    "metacollector_cloudevents_sent", "CloudEvents delivered (2xx).", ["type"], registry=REGISTRY
)
CE_FAILED = Counter(
    "metacollector_cloudevents_failed",
    "CloudEvents given up on, by reason.",
    ["reason"],
    registry=REGISTRY,
)
CE_RETRIED = Counter(
    "metacollector_cloudevents_retried", "CloudEvent delivery retries.", registry=REGISTRY
)
CE_DROPPED = Counter(
    "metacollector_cloudevents_dropped",
    "CloudEvents dropped before delivery, by reason.",
    ["reason"],
    registry=REGISTRY,
)
CE_SKIPPED = Counter(
    "metacollector_cloudevents_skipped",
    "Changes not sent because the sink already has them (existed: an object of the first list "
    "at or below the watermark; delivered: a change a previous leader delivered).",
    ["reason"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "metacollector_leader_election_is_leader",
    "1 while this replica holds the leader election Lease (it alone emits CloudEvents).",
    registry=REGISTRY,
)
CE_QUEUE_DEPTH = Gauge(
    "metacollector_cloudevents_queue_depth", "CloudEvents waiting for delivery.", registry=REGISTRY
)
CE_LATENCY = Histogram(
    "metacollector_cloudevents_delivery_latency_seconds",
    "Time from a change being queued to its CloudEvent being accepted by the sink.",
    registry=REGISTRY,
)


UPSTREAM_COUNTERS: Final = (DISPATCHED_EVENTS, API_SERVER_EVENTS, QUEUE_ADDS)


class _UpstreamFamilies:
    """Exports the upstream counters (see the module docstring)."""

    def collect(self) -> Iterator[Metric]:
        for counter in UPSTREAM_COUNTERS:
            yield counter.family()

    def describe(self) -> Iterator[Metric]:
        return iter(())


REGISTRY.register(_UpstreamFamilies())


def zero_initialise(kinds: Iterable[str]) -> None:
    """Create every upstream series at 0, as upstream does at start-up, so a rate or a pie
    chart has data before the first event (and an absent series means a broken scrape)."""
    for kind in kinds:
        for event_type in EVENT_TYPES:
            DISPATCHED_EVENTS.labels(kind, event_type)
        for api_type in API_EVENT_TYPES:
            API_SERVER_EVENTS.labels(collector_name(kind), API_SERVER_SOURCE, api_type)
    for event_type in EVENT_TYPES:
        QUEUE_ADDS.labels(QUEUE_NAME, event_type)
    QUEUE_DURATION.labels(QUEUE_NAME)
