"""Microbenchmark: cluster changes per second through reducer + mailboxes (+ take), one core.

Builds a synthetic cluster (default 5,000 nodes, 150,000 pods) directly as model objects, one
subscriber per node with Falco's selector, syncs them, then applies a mix of pod relabels, IP
changes, reschedules, creates/deletes and deployment-label updates, draining the touched
mailboxes every batch as the gRPC senders would. Prints a table and writes
bench/results/reducer.json.

    python bench/reducer.py [--nodes 5000 --pods-per-node 30 --changes 200000]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import time

from metacollector.model import (
    Metadata,
    ObjectMeta,
    OwnerReference,
    Pod,
    PodSpec,
    PodStatus,
    Service,
    ServiceSpec,
)
from metacollector.reducer import Reducer
from metacollector.subscriptions import Subscriptions, selected_kinds

FALCO = selected_kinds(
    ["Pod", "Namespace", "Deployment", "Service", "ReplicaSet", "ReplicaController"]
)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods-per-node", type=int, default=30)
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100, help="changes between mailbox drains")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(1)
    t0 = time.perf_counter()
    reducer, pods = build(args.nodes, args.pods_per_node, rng)
    build_s = time.perf_counter() - t0
    subs = Subscriptions(reducer.state)
    mailboxes = [subs.subscribe(f"node-{n}", FALCO, 0.0) for n in range(args.nodes)]
    t0 = time.perf_counter()
    synced = sum(len(m.take(reducer.state, 1 << 30)) for m in mailboxes)
    sync_s = time.perf_counter() - t0

    rates = []
    sent_total = 0
    for _ in range(args.runs):
        changes = []
        for i in range(args.changes):
            k = rng.randrange(len(pods))
            pod = pods[k]
            m = pod.metadata
            r = rng.random()
            if r < 0.5:  # relabel
                new = Pod(
                    ObjectMeta(
                        m.name,
                        m.namespace,
                        m.uid,
                        str(i),
                        m.generateName,
                        {**(m.labels or {}), "rev": str(i)},
                        m.ownerReferences,
                    ),
                    pod.spec,
                    pod.status,
                )
            elif r < 0.7:  # IP change
                new = Pod(m, pod.spec, PodStatus(f"10.200.{i % 250}.{i % 199}"))
            elif r < 0.9:  # reschedule
                new = Pod(m, PodSpec(f"node-{rng.randrange(args.nodes)}"), pod.status)
            else:  # delete and come back
                changes.append(("DELETED", pod))
                new = pod
            changes.append(("MODIFIED" if r < 0.9 else "ADDED", new))
            pods[k] = new
        touched_nodes: set[str] = set()
        t0 = time.perf_counter()
        sent = 0
        for i, (change_type, obj) in enumerate(changes):
            touched = reducer.apply(change_type, "Pod", obj)  # type: ignore[arg-type]
            subs.route(touched, 0.0)
            touched_nodes.update(node for node, _ in touched)
            if i % args.batch == 0:
                for node in touched_nodes:
                    for mb in subs.by_node.get(node, ()):
                        sent += len(mb.take(reducer.state, 1 << 20))
                touched_nodes.clear()
        elapsed = time.perf_counter() - t0
        rates.append(len(changes) / elapsed)
        sent_total += sent
    result = {
        "nodes": args.nodes,
        "pods": len(pods),
        "build_s": round(build_s, 2),
        "initial_sync_events": synced,
        "initial_sync_s": round(sync_s, 2),
        "changes_per_run": args.changes,
        "changes_per_s_median": round(statistics.median(rates)),
        "changes_per_s_runs": [round(r) for r in rates],
        "events_sent": sent_total,
    }
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    out = pathlib.Path(__file__).parent / "results" / "reducer.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
