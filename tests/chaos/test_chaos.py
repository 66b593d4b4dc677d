"""Faults injected while the cluster churns; then convergence of every subscriber and the sink.
Durations are bounded for CI; RESULTS collects one row per case for the README table."""

from __future__ import annotations

import signal

import grpc
import trio

from metacollector.grpc.client import open_watch
from tests.chaos.conftest import Chaos
from tests.e2e.grpc_watch import GrpcWatch

RESULTS: dict[str, dict[str, object]] = {}


async def under(chaos: Chaos, case: str, seconds: float = 3.0) -> None:
    await chaos.churn(seconds)
    RESULTS[case] = await chaos.check()
    print(f"{case}: converged {RESULTS[case]}")


async def test_api_connection_reset_every_n_events(chaos: Chaos) -> None:
    await chaos.env.emulator.set_faults(drop_watch_after=5)
    await under(chaos, "API connection reset every 5 events")


async def test_410_mid_stream(chaos: Chaos, nursery: trio.Nursery) -> None:
    async def compact_twice() -> None:
        for _ in range(2):
            await trio.sleep(1)
            await chaos.env.emulator.admin("/admin/compact")

    nursery.start_soon(compact_twice)
    await under(chaos, "410 Expired mid-stream (compaction x2)")


async def test_new_resource_version_epoch(chaos: Chaos, nursery: trio.Nursery) -> None:
    async def restart() -> None:
        await trio.sleep(1)
        await chaos.env.emulator.admin("/admin/restart")

    nursery.start_soon(restart)
    await under(chaos, "emulator restart with a new resourceVersion epoch")


async def test_429_storm(chaos: Chaos) -> None:
    await chaos.env.emulator.set_faults(throttle_requests=40, retry_after=1)
    await chaos.env.emulator.admin("/admin/drop-connections")  # every reflector reconnects
    await under(chaos, "429 storm with Retry-After: 1 (40 requests refused)")
    assert (await chaos.env.emulator.stats())["faults"]["throttle_requests"] == 0


async def test_malformed_watch_lines(chaos: Chaos) -> None:
    await chaos.env.emulator.set_faults(malformed_lines=10)
    await under(chaos, "malformed watch lines (10)")


async def test_api_outage(chaos: Chaos, nursery: trio.Nursery) -> None:
    emu = chaos.env.emulator

    async def outage() -> None:
        await emu.set_faults(outage=True)
        await emu.admin("/admin/drop-connections")
        await trio.sleep(5)
        await emu.set_faults(outage=False)

    async with trio.open_nursery() as inner:
        inner.start_soon(outage)
        await trio.sleep(0.2)
        await chaos.churn(3)  # the cluster keeps changing while the collector is cut off
    await under(chaos, "5 s API outage (connections dropped, requests refused)", 1)


async def test_subscribers_killed_mid_sync_100_times(chaos: Chaos) -> None:
    port = chaos.env.collector.grpc_port
    for i in range(100):
        with trio.move_on_after(0.005 * (i % 5)):
            async with open_watch("127.0.0.1", port, f"node-{i % 6}") as stream:
                async for _ in stream.messages():
                    break
    await under(chaos, "subscribers killed mid-sync 100 times", 1)
    assert chaos.env.collector.hub.subscriptions.count() == len(chaos.watches)


async def test_subscriber_that_stops_reading(chaos: Chaos) -> None:
    port = chaos.env.collector.grpc_port
    async with open_watch("127.0.0.1", port, "node-0", window=1024):
        # never read: after the 2 s stall deadline the server ends it with UNAVAILABLE
        await under(chaos, "a subscriber that stops reading", 3)
    await trio.sleep(0)


async def test_thousand_subscribers_at_once(chaos: Chaos, nursery: trio.Nursery) -> None:
    port = chaos.env.collector.grpc_port
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
        expected = {n: len(list(chaos.env.collector.hub.state.view(f"node-{n}"))) for n in range(6)}
        with trio.fail_after(60):
            while chaos.env.collector.hub.subscriptions.count() < 1000 + len(chaos.watches):
                await trio.sleep(0.05)
        await under(chaos, "1,000 subscribers connecting at once", 1)
        done.set()
        inner.cancel_scope.cancel()
    assert all(c >= expected[i % 6] - 1 for i, c in enumerate(counts)) or min(counts) > 0


async def test_cloudevents_sink_down(chaos: Chaos, nursery: trio.Nursery) -> None:
    async def down() -> None:
        chaos.receiver.up = False
        await trio.sleep(4)
        chaos.receiver.up = True

    nursery.start_soon(down)
    await under(chaos, "CloudEvents sink down for 4 s")


async def test_sigterm_during_churn() -> None:
    """As a real process: SIGTERM while the cluster churns -> exit 0, UNAVAILABLE to all."""
    from metacollector.emulator.inprocess import running_emulator
    from tests.e2e.test_process import Collector

    async with running_emulator(nodes=4, pods_per_node=10) as emu, trio.open_nursery() as nursery:
        collector = Collector(emu.kubeconfig)
        try:
            await collector.ready()
            watches = [
                GrpcWatch(f"127.0.0.1:{collector.grpc}", f"node-{i % 4}").start() for i in range(20)
            ]
            client = emu.client()
            from metacollector.emulator.churn import run_churn

            nursery.start_soon(lambda: run_churn(client, 50, duration=3))
            await trio.sleep(1)
            rc, stderr = await collector.terminate()
            assert rc == 0, stderr
            for w in watches:
                assert await w.wait_ended() == grpc.StatusCode.UNAVAILABLE
                w.channel.close()
            RESULTS["SIGTERM during churn"] = {"exit": rc}
        finally:
            if collector.proc.poll() is None:
                collector.proc.send_signal(signal.SIGKILL)
