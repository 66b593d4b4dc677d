"""CloudEvents delivery benchmark: events/s to a local receiver, and the sink's memory while the
receiver is down under steady churn (the queue bound and coalescing keep it flat).

    python bench/cloudevents_delivery.py [--events 20000] [--down 60] [--rate 200]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import trio
from _common import report

from metacollector.changes import ObjectChange
from metacollector.cloudevents import CloudEventsSink, SinkSettings
from metacollector.testing.receiver import start_receiver


def change(i: int) -> ObjectChange:
    meta = json.dumps(
        {
            "labels": {"app": f"a{i % 50}"},
            "name": f"pod-{i}",
            "namespace": "shop",
            "uid": f"uid-{i}",
        },
        separators=(",", ":"),
    ).encode()
    return ObjectChange(
        "Create",
        "Pod",
        f"uid-{i}",
        "shop",
        f"pod-{i}",
        "node-1",
        meta,
        b'{"podIP":"10.0.0.1"}',
        {"Namespace": ["ns"], "Service": []},
        0.0,
    )


async def run(args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        receiver = await start_receiver(nursery)
        sink = CloudEventsSink(
            SinkSettings(
                url=receiver.url,
                source="/bench",
                senders=args.senders,
                queue_size=args.queue_size,
                backoff_initial=0.5,
                backoff_max=2,
                max_attempts=10**6,
            )
        )
        await nursery.start(sink.run)
        start = time.perf_counter()
        for i in range(args.events):
            sink.offer(change(i))
        while len(receiver.events) < args.events:
            await trio.sleep(0.01)
        elapsed = time.perf_counter() - start
        result["events_delivered"] = args.events
        result["events_per_s"] = round(args.events / elapsed)
        result["senders"] = args.senders

        receiver.up = False
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        peak_queue = 0
        deadline = trio.current_time() + args.down
        i = args.events
        samples = []
        while trio.current_time() < deadline:
            for _ in range(int(args.rate / 10)):
                sink.offer(change(i))
                i += 1
            peak_queue = max(peak_queue, len(sink.pending))
            samples.append(tracemalloc.get_traced_memory()[0] - base)
            await trio.sleep(0.1)
        result["down_s"] = args.down
        result["changes_while_down"] = i - args.events
        result["queue_bound"] = args.queue_size
        result["peak_queue"] = peak_queue
        third = max(1, len(samples) // 3)
        result["sink_memory_mb_first_third"] = round(max(samples[:third]) / 2**20, 1)
        result["sink_memory_mb_last_third"] = round(max(samples[-third:]) / 2**20, 1)
        tracemalloc.stop()
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--down", type=float, default=60)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--queue-size", type=int, default=10000)
    args = ap.parse_args()
    report(trio.run(run, args), "cloudevents.json")


if __name__ == "__main__":
    main()
