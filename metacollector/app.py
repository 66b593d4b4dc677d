"""`metacollector run`: one nursery that owns every part of the collector.

Reflectors (one per kind) -> hub (reducer + mailboxes) -> gRPC Watch streams; the HTTP server
for probes and metrics; the optional CloudEvents sink. Cancelling the nursery is the clean
shutdown: GOAWAY and UNAVAILABLE to gRPC peers, CloudEvents flushed within their deadline.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio

from metacollector import allocator, metrics
from metacollector.cloudevents import (
    CloudEventsSink,
    SinkConfigError,
    election_callbacks,
    settings_from_env,
)
from metacollector.departures import DepartureLog
from metacollector.events import Delta
from metacollector.gcpolicy import collect_on_a_clock, freeze_heap, observe_pauses
from metacollector.grpc.server import GrpcServer, ServerLimits, server_ssl_context
from metacollector.grpc.server import StartupError as GrpcStartupError
from metacollector.grpc.watch import WatchService
from metacollector.http import Readiness, relist_check, serve_http
from metacollector.http import StartupError as HttpStartupError
from metacollector.hub import Hub
from metacollector.kube.auth import CredentialError
from metacollector.kube.client import make_client
from metacollector.kube.config import KubeConfig, KubeConfigError, load_config
from metacollector.kube.leader import ElectionConfig, default_identity, run_election
from metacollector.kube.reflector import Reflector
from metacollector.kube.resources import RESOURCES
from metacollector.log import BROKER_LOGGER, configure_logging
from metacollector.model import KIND_TYPES, Object, intern_strings
from metacollector.settings import Settings
from metacollector.state import ClusterState
from metacollector.tlsreload import Reloaded

log = logging.getLogger("metacollector")
broker_log = logging.getLogger(BROKER_LOGGER)

WATCH_PATH = "/metadata.Metadata/Watch"


@dataclass
class Running:
    """What a started collector exposes to its caller (tests, demo, bench)."""

    hub: Hub
    grpc_port: int
    metrics_port: int | None
    health_port: int | None
    reflectors: Sequence[Reflector[Object]]
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    grpc: GrpcServer | None = None  # its own figures (request bytes held, frame counters)


def default_source(cfg: KubeConfig) -> str:
    return f"/metacollector/{cfg.cluster_name or urlsplit(cfg.server).hostname or 'cluster'}"


RENDER_BETWEEN_CHECKPOINTS = 1000  # bodies rendered between checkpoints (~1-5 ms)


async def settle_once_synced(
    reflectors: Sequence[Reflector[Object]],
    pending: trio.MemoryReceiveChannel[Sequence[Delta]],
    state: ClusterState,
    settled: trio.Event,
) -> None:
    """After the first full sync reached the hub, take the state out of the cyclic GC's sight
    and render every view's bodies (in slices, so the loop stays live); then ``settled``.

    Readiness waits for it: subscribers that connect while the state is still applied,
    rendered and traversed by full collections sync at half the speed (bench/README.md,
    Scale: the initial sync competed with this work). Frozen first, so that nothing allocated
    from then on (bodies, subscribers' connections) triggers a full pass over the state."""
    for reflector in reflectors:
        await reflector.synced.wait()
    while pending.statistics().current_buffer_used:
        await trio.sleep(0.05)
    freeze_heap()
    for rendered, _ in enumerate(state.render_views(), 1):
        if rendered % RENDER_BETWEEN_CHECKPOINTS == 0:
            await trio.lowlevel.checkpoint()
    settled.set()
    log.info("cluster state synced", extra={"objects_frozen": gc.get_freeze_count()})


async def serve(
    settings: Settings,
    *,
    kubeconfig: KubeConfig | None = None,
    readiness_grace: float = 10.0,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the collector until cancelled; ``task_status.started`` once every port listens."""
    cfg = kubeconfig or load_config(settings.kubeconfig, settings.context)
    log.info("memory allocator", extra=allocator.describe())
    sink_settings = settings_from_env(
        settings.cloudevents_sink,
        settings.cloudevents_source or default_source(cfg),
        mode=settings.cloudevents_mode,
        ca_file=settings.cloudevents_ca,
        token_file=settings.cloudevents_token_file,
        replay=settings.cloudevents_replay,
    )
    election = election_config(settings) if sink_settings is not None else None
    if settings.leader_elect and sink_settings is None:
        log.info("--leader-elect without a CloudEvents sink: nothing to elect a leader for")
    sink = (
        CloudEventsSink(sink_settings, elected=election is not None)
        if sink_settings is not None
        else None
    )
    hub = Hub(
        offer=sink.offer if sink is not None else None,
        progress=sink.progress if sink is not None else None,
        departures=DepartureLog(
            settings.departure_window, max_entries=settings.departure_max_entries
        ),
    )
    metrics.zero_initialise(KIND_TYPES)
    ssl_context = None
    if settings.server_cert and settings.server_key:
        cert, key, client_ca = settings.server_cert, settings.server_key, settings.client_ca
        ssl_context = Reloaded(
            "grpc_server",
            [path for path in (cert, key, client_ca) if path],
            lambda: server_ssl_context(cert, key, client_ca),
            settings.tls_reload_interval,
        )
    watch = WatchService(
        hub,
        node_binding=settings.node_binding,
        max_subscribers_per_node=settings.max_subscribers_per_node,
    )
    server = GrpcServer(
        {WATCH_PATH: watch.watch},
        ssl_context=ssl_context,
        limits=ServerLimits(
            max_connections=settings.max_connections,
            max_streams_per_connection=settings.max_streams_per_connection,
            stall_timeout=settings.stall_timeout,
            max_request_message_size=settings.max_request_message_size,
        ),
    )
    async with make_client(cfg) as client, trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[Sequence[Delta]](16)
        reflectors = [
            Reflector(
                client,
                resource,
                KIND_TYPES[resource.kind],
                send.clone(),
                prepare=intern_strings,
                streaming_list=settings.streaming_list,
            )
            for resource in RESOURCES
        ]
        send.close()
        nursery.start_soon(hub.run, receive)
        for reflector in reflectors:
            nursery.start_soon(reflector.run)
        settled = trio.Event()
        nursery.start_soon(settle_once_synced, reflectors, receive, hub.state, settled)
        nursery.start_soon(collect_on_a_clock, lambda: server.counters.connections_closed)
        if ssl_context is not None:
            nursery.start_soon(ssl_context.run)
        if sink is not None:
            await nursery.start(sink.run)
            if election is not None:
                nursery.start_soon(run_election, client, election, election_callbacks(sink))
        grpc_listening = False
        readiness = Readiness()
        readiness.add_check("reflectors", relist_check(reflectors, readiness_grace))
        readiness.add_check(
            "state", lambda: settled.is_set() or "initial cluster state not yet applied"
        )
        readiness.add_check("grpc", lambda: grpc_listening or "gRPC port not listening")
        bind = settings.broker_bind
        grpc_port = await nursery.start(server.serve, bind.host, bind.port)
        grpc_listening = True
        broker_log.info("starting grpc server", extra={"addr": f"{bind.host}:{grpc_port}"})
        metrics_port, health_port = await nursery.start(
            serve_http, settings.metrics_bind, settings.health_bind, readiness
        )
        task_status.started(
            Running(
                hub, grpc_port, metrics_port, health_port, reflectors, nursery.cancel_scope, server
            )
        )


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def election_config(settings: Settings) -> ElectionConfig | None:
    """The Lease to campaign for, with --leader-elect (only CloudEvents need one emitter)."""
    if not settings.leader_elect:
        return None
    namespace = settings.leader_election_namespace
    if not namespace:
        try:
            with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
                namespace = f.read().strip()
        except OSError:
            raise SinkConfigError(
                "--leader-elect outside a cluster needs --leader-election-namespace"
            ) from None
    return ElectionConfig(
        identity=default_identity(),
        namespace=namespace,
        name=settings.leader_election_id,
        lease_duration=settings.leader_elect_lease_duration,
        renew_deadline=settings.leader_elect_renew_deadline,
        retry_period=settings.leader_elect_retry_period,
    )


async def _main(settings: Settings) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, settings)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)


def run_app(settings: Settings) -> int:
    """`metacollector run`: exit 0 on a signal, 1 with one line on a startup error."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.unmapped_flags:
        log.info(
            "flags accepted for compatibility, without effect",
            extra={"flags": dict(settings.unmapped_flags)},
        )
    observe_pauses(_gc_paused)
    try:
        trio.run(_main, settings)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        startup = _startup_error(exc)
        if startup is None:
            raise
        print(f"metacollector: error: {startup}", file=sys.stderr)
        return 1
    return 0


_gc_pauses = [metrics.GC_PAUSE.labels(str(generation)) for generation in range(3)]


def _gc_paused(generation: int, seconds: float, cpu_seconds: float) -> None:
    _gc_pauses[generation].observe(seconds)
    # Warn on the collector's own cost, not on wall time: on a loaded machine a 1 ms
    # collection preempted by the scheduler took 50+ ms of wall time and printed a warning
    # (even after a one-line startup error, which must stay one line).
    if cpu_seconds >= 0.05:
        log.warning(
            "long gc pause",
            extra={"generation": generation, "seconds": seconds, "cpu_seconds": cpu_seconds},
        )


STARTUP_ERRORS = (
    KubeConfigError,
    CredentialError,
    GrpcStartupError,
    HttpStartupError,
    SinkConfigError,
)


def _startup_error(exc: BaseException) -> BaseException | None:
    """The startup error inside ``exc`` (trio wraps task errors in exception groups)."""
    if isinstance(exc, STARTUP_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner)
            if found is not None:
                return found
    return None
