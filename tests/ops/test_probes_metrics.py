"""/metrics and /readyz over real sockets, including readiness during a forced relist."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from metacollector.app import Running, _startup_error, serve
from metacollector.emulator.inprocess import EmulatorHandle, running_emulator
from metacollector.http import StartupError
from metacollector.kube.config import load_kubeconfig
from metacollector.settings import BindAddress, Settings
from tests.e2e.grpc_watch import GrpcWatch


@pytest.fixture
async def pipeline(nursery: trio.Nursery) -> AsyncIterator[tuple[EmulatorHandle, Running]]:
    async with running_emulator(nodes=2, pods_per_node=3, bookmark_interval=0.5) as emu:
        await emu.set_faults(only_user_agent="metacollector")
        settings = Settings(
            metrics_bind="127.0.0.1:0",
            health_bind="127.0.0.1:0",
            broker_bind=BindAddress("127.0.0.1", 0),
        )
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
        'meta_collector_collector_event_api_server_received{name="pod",source="api-server",type="added"}'
        in text
    )
    assert 'meta_collector_broker_dispatched_events_total{kind="Pod",type="Create"}' in text
    for ours in (
        'metacollector_objects{kind="Pod"} 6.0',
        "metacollector_mailbox_depth",
        "metacollector_send_latency_seconds_bucket",
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
