"""Every Prometheus metric of the process, defined in one place (SPEC section 4).

Upstream names (``meta_collector_*``) are kept for existing dashboards; our own live under
``metacollector_``. All metrics register on ``REGISTRY`` so tests and the HTTP server share one.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import Metric, UnknownMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# --- upstream names -------------------------------------------------------------------------
SUBSCRIBERS = Gauge(
    "meta_collector_server_subscribers",
    "Number of subscribers connected to the gRPC server.",
    registry=REGISTRY,
)
DISPATCHED_EVENTS = Counter(
    "meta_collector_broker_dispatched_events",
    "Events sent to subscribers, per message.",
    ["kind", "type"],
    registry=REGISTRY,
)
API_SERVER_EVENTS = Counter(
    "meta_collector_collector_event_api_server_received",
    "Events received from the API server.",
    ["name", "source", "type"],
    registry=REGISTRY,
)

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
SEND_LATENCY = Histogram(
    "metacollector_send_latency_seconds",
    "Time from a change reaching the reducer to its event being written to a subscriber.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
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


class UpstreamNames:
    """Also export the upstream counters under their exact Go names (no ``_total`` suffix, which
    prometheus-client always adds to counters), so existing dashboards and alerts keep working."""

    def collect(self) -> Iterator[Metric]:
        for counter in (DISPATCHED_EVENTS, API_SERVER_EVENTS):
            for family in counter.collect():
                alias = UnknownMetricFamily(
                    family.name,
                    family.documentation + " (upstream name)",
                    labels=counter._labelnames,
                )
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        alias.add_metric(
                            [sample.labels[k] for k in counter._labelnames], sample.value
                        )
                yield alias

    def describe(self) -> Iterator[Metric]:
        return iter(())


REGISTRY.register(UpstreamNames())
