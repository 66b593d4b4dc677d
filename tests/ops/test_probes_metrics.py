"""/metrics and /readyz over real sockets, including readiness during a forced relist."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from metacollector import metrics
from metacollector.app import Running, _startup_error, serve
from metacollector.emulator.inprocess import EmulatorHandle, running_emulator
from metacollector.http import StartupError
from metacollector.kube.config import load_kubeconfig
from metacollector.model import KIND_TYPES
from metacollector.settings import BindAddress, Settings
from tests.support.cluster import Cluster
from tests.support.env import local_settings
from tests.support.grpc_watch import GrpcWatch


@pytest.fixture
async def pipeline(nursery: trio.Nursery) -> AsyncIterator[tuple[EmulatorHandle, Running]]:
    async with running_emulator(nodes=2, pods_per_node=3, bookmark_interval=0.5) as emu:
        await emu.set_faults(only_user_agent="metacollector")
        settings = local_settings()
        cfg = load_kubeconfig(str(emu.kubeconfig))
        running = await nursery.start(
            lambda task_status: serve(
                settings, kubeconfig=cfg, readiness_grace=0.5, task_status=task_status
            )
        )
        yield emu, running
        running.cancel_scope.cancel()


async def readyz(running: Running) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{running.health_port}/readyz")


async def wait_status(running: Running, code: int, timeout: float = 15) -> httpx.Response:
    with trio.fail_after(timeout):
        while (r := await readyz(running)).status_code != code:
            await trio.sleep(0.05)
    return r


async def test_metrics_have_upstream_names_and_ours(
    pipeline: tuple[EmulatorHandle, Running],
) -> None:
    _emu, running = pipeline
    await wait_status(running, 200)
    w = GrpcWatch(f"127.0.0.1:{running.grpc_port}", "node-0").start()
    await w.wait_for(lambda w: len(w.events) > 3)
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{running.metrics_port}/metrics")).text
        assert (
            await client.get(f"http://127.0.0.1:{running.health_port}/healthz")
        ).status_code == 200
        assert (
            await client.get(f"http://127.0.0.1:{running.metrics_port}/readyz")
        ).status_code == 404
    assert "meta_collector_server_subscribers 1.0" in text
    assert 'meta_collector_broker_dispatched_events{kind="Pod",type="Create"}' in text
    assert (
        'meta_collector_collector_event_api_server_received{name="pod-collector",'
        'source="api-server",type="create"}' in text
    )
    assert "meta_collector_broker_dispatched_events_total" not in text  # upstream's name only
    assert "_created" not in text
    for ours in (
        'metacollector_objects{kind="Pod"} 6.0',
        "metacollector_mailbox_depth",
        'meta_collector_broker_queue_duration_seconds_bucket{le="0.001",name="mailbox"}',
        'meta_collector_broker_queue_adds{name="mailbox",type="Create"}',
        'metacollector_reflector_synced{resource="pods"} 1.0',
        "process_resident_memory_bytes",
    ):
        assert ours in text, ours
    w.close()


async def test_readiness_flips_during_forced_relist(
    pipeline: tuple[EmulatorHandle, Running],
) -> None:
    emu, running = pipeline
    await wait_status(running, 200)
    # every watch gets an in-band 410; the relists are refused with 429 for a while
    await emu.set_faults(throttle_requests=10_000, retry_after=1)
    await emu.admin("/admin/compact")
    r = await wait_status(running, 503)
    assert "relisting for" in r.text and "[-]reflectors failed" in r.text
    await emu.set_faults(throttle_requests=0)
    await wait_status(running, 200)
    assert sum(ref.relists for ref in running.reflectors) >= 1


async def test_busy_metrics_port_is_a_startup_error_of_the_app() -> None:
    async with running_emulator(nodes=1, pods_per_node=1) as emu:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            settings = Settings(
                metrics_bind=f"127.0.0.1:{port}",
                health_bind="127.0.0.1:0",
                broker_bind=BindAddress("127.0.0.1", 0),
            )
            cfg = load_kubeconfig(str(emu.kubeconfig))
            with pytest.raises(BaseException) as info:
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        lambda task_status: serve(settings, kubeconfig=cfg, task_status=task_status)
                    )
        found = _startup_error(info.value)  # what `metacollector run` prints as its one line
        assert isinstance(found, StartupError)
        assert str(found) == (
            f"--metrics-bind-address: cannot listen on '127.0.0.1:{port}': Address already in use"
        )


def sample(metric: str, /, **labels: str) -> float:
    """A sample of the shared registry (what /metrics serves), 0 when absent."""
    return metrics.REGISTRY.get_sample_value(metric, labels) or 0.0


API = "meta_collector_collector_event_api_server_received"
POD_COLLECTOR = {"name": "pod-collector", "source": "api-server"}


async def wait_sample(
    name: str, labels: dict[str, str], target: float, timeout: float = 10
) -> None:
    with trio.fail_after(timeout):
        while sample(name, **labels) < target:
            await trio.sleep(0.02)


async def test_upstream_counters_count_like_upstream(nursery: trio.Nursery) -> None:
    """Initial list counted as `create`, a relabel as `update`, a deletion as `delete` (upstream
    files deletions under `update` and updates under `delete`: swapped labels, fixed here),
    `generic` pre-set to 0; mailbox adds and queue durations follow the subscriber's events."""
    before = {t: sample(API, **POD_COLLECTOR, type=t) for t in metrics.API_EVENT_TYPES}
    adds_before = sample("meta_collector_broker_queue_adds", name="mailbox", type="Create")
    sent_before = sum(
        sample("meta_collector_broker_dispatched_events", kind=k, type=t)
        for k in KIND_TYPES
        for t in metrics.EVENT_TYPES
    )
    waited_before = sample("meta_collector_broker_queue_duration_seconds_count", name="mailbox")
    async with running_emulator(nodes=2, pods_per_node=3) as emu:
        settings = local_settings()
        running = await nursery.start(
            lambda task_status: serve(
                settings, kubeconfig=load_kubeconfig(str(emu.kubeconfig)), task_status=task_status
            )
        )
        await wait_status(running, 200)
        async with emu.client() as client:
            pods = (await client.get("/api/v1/pods")).json()["items"]
            assert sample(API, **POD_COLLECTOR, type="create") - before["create"] == len(pods)
            for kind in KIND_TYPES:  # every series exists from the start
                for t in metrics.API_EVENT_TYPES:
                    labels = {"name": metrics.collector_name(kind), "source": "api-server"}
                    assert metrics.REGISTRY.get_sample_value(API, {**labels, "type": t}) is not None
                for t in metrics.EVENT_TYPES:
                    assert (
                        metrics.REGISTRY.get_sample_value(
                            "meta_collector_broker_dispatched_events", {"kind": kind, "type": t}
                        )
                        is not None
                    )

            def synced(w: GrpcWatch) -> bool:  # every message sent so far has arrived
                depth = metrics.REGISTRY.get_sample_value("metacollector_mailbox_depth")
                sent = sum(
                    sample("meta_collector_broker_dispatched_events", kind=k, type=t)
                    for k in KIND_TYPES
                    for t in metrics.EVENT_TYPES
                )
                return bool(w.events) and depth == 0 and len(w.events) == sent - sent_before

            w = GrpcWatch(f"127.0.0.1:{running.grpc_port}", "node-0").start()
            await w.wait_for(synced)
            added = sample("meta_collector_broker_queue_adds", name="mailbox", type="Create")
            assert added - adds_before >= len(w.events)  # every initial key marked, as Create
            sent = sum(
                sample("meta_collector_broker_dispatched_events", kind=k, type=t)
                for k in KIND_TYPES
                for t in metrics.EVENT_TYPES
            )
            assert sent - sent_before == len(w.events)
            waited = sample("meta_collector_broker_queue_duration_seconds_count", name="mailbox")
            assert waited - waited_before == len(w.events)  # one observation per event sent

            cluster = Cluster(client)
            ns, name = pods[0]["metadata"]["namespace"], pods[0]["metadata"]["name"]
            await cluster.patch("Pod", ns, name, {"metadata": {"labels": {"relabelled": "yes"}}})
            await wait_sample(API, {**POD_COLLECTOR, "type": "update"}, before["update"] + 1)
            updates = sample(API, **POD_COLLECTOR, type="update")
            gone = pods[1]["metadata"]
            await cluster.delete("Pod", gone["namespace"], gone["name"])
            await wait_sample(API, {**POD_COLLECTOR, "type": "delete"}, before["delete"] + 1)
        w.close()
        running.cancel_scope.cancel()
    assert sample(API, **POD_COLLECTOR, type="delete") - before["delete"] == 1
    assert sample(API, **POD_COLLECTOR, type="update") == updates  # the deletion is no update
    assert sample(API, **POD_COLLECTOR, type="generic") == before["generic"] == 0


async def test_one_valid_family_per_name_in_both_formats() -> None:
    """prometheus-client's strict OpenMetrics parser accepts the exposition (it rejected the
    old untyped alias families); each family is declared once in the text format."""
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    metrics.zero_initialise(KIND_TYPES)
    om = openmetrics(metrics.REGISTRY).decode()
    names = [f.name for f in text_string_to_metric_families(om)]
    assert len(names) == len(set(names))
    assert "meta_collector_broker_dispatched_events" in names and "_created" not in om
    text = generate_latest(metrics.REGISTRY).decode()
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared))
    assert "# TYPE meta_collector_broker_dispatched_events untyped" in text
