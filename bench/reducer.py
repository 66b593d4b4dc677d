"""Microbenchmark: cluster changes per second through reducer + mailboxes (+ take), one core.

Builds a synthetic cluster (default 5,000 nodes, 150,000 pods) directly as model objects, one
subscriber per node with Falco's selector, syncs them, then applies a mix of 50% pod relabels,
20% IP changes, 20% reschedules and 10% delete+recreate, draining the woken mailboxes after
every batch as the gRPC senders would. Rates are per CPU-second of this process (time the
scheduler gave to other processes is not counted). ``--allocator hugepages`` runs it with the
optional set-up of metacollector/allocator.py. Prints a table and writes
bench/results/reducer.json.

    python bench/reducer.py [--nodes 5000 --pods-per-node 30 --changes 200000]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import sys
import time

import msgspec
from _common import report

from metacollector import allocator
from metacollector.events import Outcome, WatchType
from metacollector.gcpolicy import freeze_heap
from metacollector.model import (
    Metadata,
    ObjectMeta,
    OwnerReference,
    Pod,
    PodSpec,
    PodStatus,
    Service,
    ServiceSpec,
    decode,
)
from metacollector.reducer import Reducer
from metacollector.subscriptions import FALCO_KINDS, Mailbox, Subscriptions, selected_kinds

FALCO = selected_kinds(FALCO_KINDS)


def build(nodes: int, pods_per_node: int, rng: random.Random) -> tuple[Reducer, list[Pod]]:
    reducer = Reducer()
    namespaces = [f"ns-{i}" for i in range(50)]
    for ns in namespaces:
        reducer.apply("ADDED", "Namespace", Metadata(ObjectMeta(name=ns, uid=f"uid-{ns}")))
    deployments = []
    for i in range(nodes * pods_per_node // 10):
        ns = namespaces[i % len(namespaces)]
        dep, rs = f"dep-{i}", f"rs-{i}"
        labels = {"app": dep, "team": f"t{i % 7}"}
        reducer.apply(
            "ADDED",
            "Deployment",
            Metadata(ObjectMeta(name=dep, namespace=ns, uid=dep, labels=labels)),
        )
        reducer.apply(
            "ADDED",
            "ReplicaSet",
            Metadata(
                ObjectMeta(
                    name=rs,
                    namespace=ns,
                    uid=rs,
                    labels=labels,
                    ownerReferences=(OwnerReference("Deployment", dep, dep, True),),
                )
            ),
        )
        if i % 2 == 0:
            reducer.apply(
                "ADDED",
                "Service",
                Service(
                    ObjectMeta(name=dep, namespace=ns, uid=f"svc-{i}"), ServiceSpec({"app": dep})
                ),
            )
        deployments.append((ns, rs, labels))
    pods = []
    for n in range(nodes):
        for j in range(pods_per_node):
            ns, rs, labels = deployments[rng.randrange(len(deployments))]
            pod = Pod(
                ObjectMeta(
                    name=f"p-{n}-{j}",
                    namespace=ns,
                    uid=f"pod-{n}-{j}",
                    labels=dict(labels),
                    generateName=rs + "-",
                    ownerReferences=(OwnerReference("ReplicaSet", rs, rs, True),),
                ),
                PodSpec(f"node-{n}"),
                PodStatus(f"10.{n // 250}.{n % 250}.{j}"),
            )
            reducer.apply("ADDED", "Pod", pod)
            pods.append(pod)
    return reducer, pods


_encode = msgspec.json.Encoder().encode


def _change(pods: list[Pod], rng: random.Random, nodes: int) -> list[tuple[WatchType, bytes]]:
    """One random change to a random pod (its JSON watch objects); updates ``pods``."""
    k = rng.randrange(len(pods))
    pod = pods[k]
    r = rng.random()
    if r < 0.5:  # relabel
        labels = {**(pod.metadata.labels or {}), "rev": str(rng.getrandbits(20))}
        new = msgspec.structs.replace(
            pod, metadata=msgspec.structs.replace(pod.metadata, labels=labels)
        )
    elif r < 0.7:  # IP change
        new = msgspec.structs.replace(
            pod, status=PodStatus(f"10.200.{rng.randrange(250)}.{rng.randrange(250)}")
        )
    elif r < 0.9:  # reschedule
        new = msgspec.structs.replace(pod, spec=PodSpec(f"node-{rng.randrange(nodes)}"))
    else:  # delete and come back
        pods[k] = pod
        return [("DELETED", _encode(pod)), ("ADDED", _encode(pod))]
    pods[k] = new
    return [("MODIFIED", _encode(new))]


def lookup_ns(entries: int, rng: random.Random, lookups: int = 200_000) -> float:
    """ns per random lookup in a dict of ``entries`` uid-like keys: this machine's cost of
    touching cold memory, which is what a change costs at 150,000 pods more than at 3,000."""
    table = {f"pod-uid-{i:08d}": [i] for i in range(entries)}
    keys = [f"pod-uid-{rng.randrange(entries):08d}" for _ in range(lookups)]
    start = time.perf_counter()
    for key in keys:
        table[key][0]
    return (time.perf_counter() - start) / lookups * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods-per-node", type=int, default=30)
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100, help="changes between mailbox drains")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--allocator",
        choices=["python", "hugepages"],
        default="python",
        help="python: CPython's pymalloc (as shipped); hugepages: metacollector/allocator.py",
    )
    args = ap.parse_args()
    env = allocator.environment(os.environ, args.allocator == "hugepages")
    if env != os.environ:  # read when the interpreter starts: run again with them (un)set
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    rng = random.Random(1)
    t0 = time.perf_counter()
    reducer, pods = build(args.nodes, args.pods_per_node, rng)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in reducer.state.render_views():  # as the collector does once synced
        pass
    render_s = time.perf_counter() - t0
    subs = Subscriptions(reducer.state)
    mailboxes = [subs.subscribe(f"node-{n}", FALCO, 0.0) for n in range(args.nodes)]
    t0 = time.perf_counter()
    synced = sum(len(m.take(reducer.state, 1 << 30)) for m in mailboxes)
    sync_s = time.perf_counter() - t0
    freeze_heap()  # as the collector does once synced

    # The bench keeps its own copies of the pods. Each change is made on the copy, encoded and
    # decoded as the reflector decodes a watch line, so the reducer receives fresh objects while
    # the versions it holds are cold in memory, as in the collector. At 150,000 pods the cost
    # is dominated by cache misses on that state, so reusing its objects would flatter the rate.
    pods = [decode("Pod", _encode(p)) for p in pods]  # type: ignore[misc]
    rates, with_decode = [], []
    sent_total = 0
    ready: set[Mailbox] = set()  # woken mailboxes, as the gRPC layer's on_ready wakes senders
    for mailbox in mailboxes:
        mailbox.wake_with(functools.partial(ready.add, mailbox))
    for _ in range(args.runs):
        applied, elapsed, decode_s = 0, 0.0, 0.0
        while applied < args.changes:
            lines = []
            for _ in range(args.batch):
                lines.extend(_change(pods, rng, args.nodes))
            t0 = time.process_time()
            batch = [(change_type, decode("Pod", line)) for change_type, line in lines]
            t1 = time.process_time()
            out = Outcome([], None)  # as the hub applies a slice: touched routed once
            for change_type, obj in batch:
                reducer.apply(change_type, "Pod", obj, out)
            subs.route(out.touched, 0.0)
            for mailbox in ready:
                sent_total += len(mailbox.take(reducer.state, 1 << 20))
            ready.clear()
            elapsed += time.process_time() - t1
            decode_s += t1 - t0
            applied += len(batch)
        rates.append(applied / elapsed)
        with_decode.append(applied / (elapsed + decode_s))
    result = {
        **allocator.describe(),
        "nodes": args.nodes,
        "pods": len(pods),
        "build_s": round(build_s, 2),
        "render_views_s": round(render_s, 2),
        "initial_sync_events": synced,
        "initial_sync_s": round(sync_s, 2),
        "changes_per_run": args.changes,
        "changes_per_s_median": round(statistics.median(rates)),
        "changes_per_s_runs": [round(r) for r in rates],
        "with_json_decode_per_s_median": round(statistics.median(with_decode)),
        "events_sent": sent_total,
        "random_dict_lookup_ns_3k_150k": [
            round(lookup_ns(3_000, rng)),
            round(lookup_ns(150_000, rng)),
        ],
    }
    report(result, "reducer.json")


if __name__ == "__main__":
    main()
