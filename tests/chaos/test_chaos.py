"""Faults injected while the cluster churns; then convergence of every subscriber and the sink.
Each test first shows that its fault fired (the collector's restart/relist/stream metrics, or
the emulator's /admin/stats), so a broken injector fails it instead of passing quietly.
Durations are bounded for CI; RESULTS collects one row per case for the README table."""

from __future__ import annotations

import logging
import signal

import grpc
import pytest
import trio

from metacollector.emulator.churn import run_churn
from metacollector.emulator.inprocess import running_emulator
from metacollector.grpc.client import WatchEnded, open_watch
from metacollector.grpc.status import Status
from metacollector.log import GRPC_SERVER_LOGGER
from tests.support.chaos import Chaos, cluster_changed
from tests.support.grpc_watch import GrpcWatch
from tests.support.metrics import counted
from tests.support.process import Collector

RESULTS: dict[str, dict[str, object]] = {}
RESTARTS = "metacollector_watch_restarts_total"
STREAMS_ENDED = "metacollector_grpc_streams_ended_total"


async def under(chaos: Chaos, case: str, seconds: float = 3.0) -> None:
    await chaos.churn(seconds)
    RESULTS[case] = await chaos.check()
    print(f"{case}: converged {RESULTS[case]}")


async def test_api_connection_reset_every_n_events(chaos: Chaos) -> None:
    errors = counted(RESTARTS, cause="error")
    await chaos.env.emulator.set_faults(drop_watch_after=5)
    await under(chaos, "API connection reset every 5 events")
    assert counted(RESTARTS, cause="error") > errors  # watches were cut, and resumed
    assert chaos.relists() == dict.fromkeys(chaos.relists(), 0)  # ... without relisting


async def test_410_mid_stream(chaos: Chaos, nursery: trio.Nursery) -> None:
    async def compact_twice() -> None:
        for _ in range(2):
            await cluster_changed(chaos.env.emulator)
            await chaos.env.emulator.admin("/admin/compact")

    nursery.start_soon(compact_twice)
    await under(chaos, "410 Expired mid-stream (compaction x2)")
    assert all(n >= 1 for n in chaos.relists().values()), chaos.relists()


async def test_new_resource_version_epoch(chaos: Chaos, nursery: trio.Nursery) -> None:
    async def restart() -> None:
        await cluster_changed(chaos.env.emulator)
        await chaos.env.emulator.admin("/admin/restart")

    nursery.start_soon(restart)
    await under(chaos, "emulator restart with a new resourceVersion epoch")
    # every resourceVersion changed: every reflector had to list again
    assert all(n >= 1 for n in chaos.relists().values()), chaos.relists()


async def test_429_storm(chaos: Chaos) -> None:
    throttled = counted(RESTARTS, cause="throttled")
    await chaos.env.emulator.set_faults(throttle_requests=40, retry_after=1)
    await chaos.env.emulator.admin("/admin/drop-connections")  # every reflector reconnects
    await under(chaos, "429 storm with Retry-After: 1 (40 requests refused)")
    assert (await chaos.env.emulator.stats())["faults"]["throttle_requests"] == 0
    assert counted(RESTARTS, cause="throttled") > throttled


async def test_malformed_watch_lines(chaos: Chaos) -> None:
    malformed = counted(RESTARTS, cause="malformed")
    await chaos.env.emulator.set_faults(malformed_lines=10)
    await under(chaos, "malformed watch lines (10)")
    assert (await chaos.env.emulator.stats())["faults"]["malformed_lines"] == 0
    assert counted(RESTARTS, cause="malformed") > malformed


async def test_api_outage(chaos: Chaos) -> None:
    emu = chaos.env.emulator
    plurals = list(chaos.relists())

    def errors() -> dict[str, float]:
        return {p: counted(RESTARTS, resource=p, cause="error") for p in plurals}

    before = errors()
    during: dict[str, float] = {}
    await emu.set_faults(outage=True)
    await emu.admin("/admin/drop-connections")

    async def end_outage() -> None:
        await trio.sleep(5)  # the outage's length, not a wait for anything
        during.update(errors())
        await emu.set_faults(outage=False)

    async with trio.open_nursery() as inner:
        inner.start_soon(end_outage)
        await chaos.churn(3)  # the cluster keeps changing while the collector is cut off
    # every reflector lost its watch (the drop) and then failed to reconnect (the outage)
    failed = {p: during[p] - before[p] for p in plurals}
    assert all(n >= 2 for n in failed.values()), failed
    await under(chaos, "5 s API outage (connections dropped, requests refused)", 1)


async def test_subscribers_killed_mid_sync_100_times(
    chaos: Chaos, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=GRPC_SERVER_LOGGER)
    port = chaos.env.collector.grpc_port
    for i in range(100):
        with trio.move_on_after(0.005 * (i % 5)):
            async with open_watch("127.0.0.1", port, f"node-{i % 6}") as stream:
                async for _ in stream.messages():
                    break
    await under(chaos, "subscribers killed mid-sync 100 times", 1)
    logged = [r.getMessage() for r in caplog.records]
    opened, ended = logged.count("received watch request"), logged.count("stream deleted")
    # some are cancelled before their request arrives (0-20 ms each); the collector saw the
    # others come and go
    assert opened > 0 and ended == opened, (opened, ended)
    assert chaos.env.collector.hub.subscriptions.count() == len(chaos.watches)


async def test_subscriber_that_stops_reading(chaos: Chaos) -> None:
    port = chaos.env.collector.grpc_port
    unavailable = counted(STREAMS_ENDED, code="UNAVAILABLE")
    async with open_watch("127.0.0.1", port, "node-0", window=1024) as stream:
        # never read: after the 2 s stall deadline the server ends it with UNAVAILABLE
        await under(chaos, "a subscriber that stops reading", 3)
        assert counted(STREAMS_ENDED, code="UNAVAILABLE") > unavailable
        with pytest.raises(WatchEnded) as ended:  # what the subscriber itself then reads
            with trio.fail_after(10):
                async for _ in stream.messages():
                    pass
    assert ended.value.status == Status.UNAVAILABLE
    assert ended.value.message == "subscriber too slow: no flow-control window"


async def test_thousand_subscribers_at_once(chaos: Chaos) -> None:
    port = chaos.env.collector.grpc_port
    hub = chaos.env.collector.hub
    counts = [0] * 1000
    done = trio.Event()

    async def subscriber(i: int) -> None:
        async with open_watch("127.0.0.1", port, f"node-{i % 6}") as stream:
            async for batch in stream.messages():
                counts[i] += len(batch)
                if done.is_set():
                    return

    async with trio.open_nursery() as inner:
        for i in range(1000):
            inner.start_soon(subscriber, i)
        # nothing churns until all are subscribed: each node's view is what each one syncs
        synced = {n: len(list(hub.state.view(f"node-{n}"))) for n in range(6)}
        with trio.fail_after(60):
            while hub.subscriptions.count() < 1000 + len(chaos.watches):
                await trio.sleep(0.05)
        await under(chaos, "1,000 subscribers connecting at once", 1)
        done.set()
        inner.cancel_scope.cancel()
    short = [i for i, c in enumerate(counts) if c < synced[i % 6]]
    assert short == [], f"{len(short)} subscribers received less than their initial sync"


async def test_cloudevents_sink_down(chaos: Chaos, nursery: trio.Nursery) -> None:
    retried = counted("metacollector_cloudevents_retried_total")

    async def down() -> None:
        chaos.receiver.up = False
        await trio.sleep(4)  # the fault's length, not a wait for anything
        chaos.receiver.up = True

    nursery.start_soon(down)
    await under(chaos, "CloudEvents sink down for 4 s")
    assert counted("metacollector_cloudevents_retried_total") > retried  # 503s were retried


async def test_sigterm_during_churn() -> None:
    """As a real process: SIGTERM while the cluster churns -> exit 0, UNAVAILABLE to all."""
    async with running_emulator(nodes=4, pods_per_node=10) as emu, trio.open_nursery() as nursery:
        collector = Collector(emu.kubeconfig)
        try:
            await collector.ready()
            watches = [
                GrpcWatch(f"127.0.0.1:{collector.grpc}", f"node-{i % 4}").start() for i in range(20)
            ]
            client = emu.client()
            nursery.start_soon(lambda: run_churn(client, 50, duration=3))
            await cluster_changed(emu)
            rc, stderr = await collector.terminate()
            assert rc == 0, stderr
            assert "shutting down" in stderr and "SIGTERM" in stderr  # it was the signal
            for w in watches:
                assert await w.wait_ended() == grpc.StatusCode.UNAVAILABLE
                w.channel.close()
            RESULTS["SIGTERM during churn"] = {"exit": rc}
        finally:
            if collector.proc.poll() is None:
                collector.proc.send_signal(signal.SIGKILL)
