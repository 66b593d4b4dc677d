"""Cost per change as one dimension of the cluster grows 10x (issue 18): the reducer must be
linear in what a change changes, so each dimension's cost ratio between sizes should follow
its output ratio (within 1.5x), never the size itself.

For each dimension a cluster is built at a base size and at 10x, one subscriber per node with
Falco's selector is synced, then the same kind of change is applied ``--changes`` times, every
woken mailbox drained after each change (fast subscribers: the most output a change can cause).
Per change it counts the reducer's operations (1 for the change plus ``ClusterState.ops``:
candidates checked, pods, keys and label pairs moved; deterministic), the events and bytes produced, and the CPU seconds of reducer +
routing + take (render included; process time, noisy on a shared machine: the median of
``--runs``). The ratios compare 10x with 1x: ops against events, CPU against bytes.

    python bench/complexity.py [--changes 200 --runs 3]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import pathlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from metacollector.events import Outcome, WatchType
from metacollector.gcpolicy import freeze_heap
from metacollector.model import (
    Metadata,
    Object,
    ObjectMeta,
    OwnerReference,
    Pod,
    PodSpec,
    PodStatus,
    Service,
    ServiceSpec,
)
from metacollector.reducer import Reducer
from metacollector.subscriptions import Mailbox, Subscriptions, selected_kinds

FALCO = selected_kinds(
    ["Pod", "Namespace", "Deployment", "Service", "ReplicaSet", "ReplicaController"]
)
Change = tuple[WatchType, str, Object]


def namespace(name: str) -> Metadata:
    return Metadata(ObjectMeta(name=name, uid=f"ns-{name}"))


def pod(
    uid: str,
    node: str,
    ns: str = "shop",
    labels: dict[str, str] | None = None,
    owner: str = "",
    ip: str = "10.0.0.1",
) -> Pod:
    owners = (OwnerReference("ReplicaSet", owner, owner, True),) if owner else ()
    meta = ObjectMeta(
        name=uid, namespace=ns, uid=uid, labels=labels, ownerReferences=owners, generateName=""
    )
    return Pod(meta, PodSpec(node), PodStatus(ip))


def service(uid: str, selector: dict[str, str], ns: str = "shop") -> Service:
    return Service(ObjectMeta(name=uid, namespace=ns, uid=uid), ServiceSpec(selector))


def replicaset(uid: str, deployment: str = "", ns: str = "shop") -> Metadata:
    owners = (OwnerReference("Deployment", deployment, deployment, True),) if deployment else ()
    return Metadata(ObjectMeta(name=uid, namespace=ns, uid=uid, ownerReferences=owners))


@dataclass
class Scenario:
    """A cluster of size ``n`` along one dimension and a stream of changes of one kind."""

    name: str
    what: str  # the change applied
    build: Callable[[int], list[Change]]
    changes: Callable[[int, int], Iterator[Change]]  # (n, count) -> changes
    base: int


def _services_build(n: int) -> list[Change]:
    out: list[Change] = [("ADDED", "Namespace", namespace("shop"))]
    out += [("ADDED", "Pod", pod(f"p{i}", f"n{i % 5}", labels={"app": "web"})) for i in range(10)]
    out += [("ADDED", "Service", service(f"s{i:06d}", {"app": "web"})) for i in range(n)]
    return out


def _services_changes(n: int, count: int) -> Iterator[Change]:
    for i in range(count):  # add one more Service selecting the same 10 pods, then remove it
        svc = service(f"x{i:06d}", {"app": "web"})
        yield "ADDED", "Service", svc
        yield "DELETED", "Service", svc


def _pods_per_service_build(n: int) -> list[Change]:
    out: list[Change] = [("ADDED", "Namespace", namespace("shop"))]
    out += [("ADDED", "Pod", pod(f"p{i}", f"n{i % 50}", labels={"app": "web"})) for i in range(n)]
    return out


def _pods_per_service_changes(n: int, count: int) -> Iterator[Change]:
    for i in range(count):  # a Service selecting all n pods comes and goes
        svc = service(f"x{i:06d}", {"app": "web"})
        yield "ADDED", "Service", svc
        yield "DELETED", "Service", svc


def _labels_build(n: int) -> list[Change]:
    out: list[Change] = [("ADDED", "Namespace", namespace("shop"))]
    out.append(("ADDED", "Service", service("svc", {"app": "web"})))
    for i in range(50):
        labels = {"app": "web", **{f"label-{j}": f"v{j}" for j in range(n - 1)}}
        out.append(("ADDED", "Pod", pod(f"p{i}", f"n{i % 5}", labels=labels)))
    return out


def _labels_changes(n: int, count: int) -> Iterator[Change]:
    for i in range(count):  # one label of one pod changes value
        labels = {"app": "web", **{f"label-{j}": f"v{j}" for j in range(n - 1)}, "rev": str(i)}
        yield "MODIFIED", "Pod", pod(f"p{i % 50}", f"n{i % 50 % 5}", labels=labels)


def _namespaces_build(n: int) -> list[Change]:
    out: list[Change] = []
    for k in range(n):
        ns = f"ns{k}"
        out.append(("ADDED", "Namespace", namespace(ns)))
        out.append(("ADDED", "Service", service(f"svc-{k}", {"app": "web"}, ns)))
        out += [
            ("ADDED", "Pod", pod(f"p{k}-{i}", f"n{(k + i) % 5}", ns, {"app": "web"}))
            for i in range(3)
        ]
    return out


def _namespaces_changes(n: int, count: int) -> Iterator[Change]:
    for i in range(count):  # a pod's IP changes, in one of the namespaces
        k = i % n
        yield (
            "MODIFIED",
            "Pod",
            pod(f"p{k}-0", f"n{k % 5}", f"ns{k}", {"app": "web"}, ip=f"10.1.{i % 250}.1"),
        )


def _pods_per_node_build(n: int) -> list[Change]:
    out: list[Change] = [("ADDED", "Namespace", namespace("shop"))]
    out.append(("ADDED", "Service", service("svc", {"app": "web"})))
    out += [("ADDED", "Pod", pod(f"p{i}", "n0", labels={"app": "web"})) for i in range(n)]
    return out


def _pods_per_node_changes(n: int, count: int) -> Iterator[Change]:
    for i in range(count):  # a pod on the crowded node changes IP, another is replaced
        yield "MODIFIED", "Pod", pod(f"p{i % n}", "n0", labels={"app": "web"}, ip=f"10.2.{i}.1")
        new = pod(f"q{i}", "n0", labels={"app": "web"})
        yield "ADDED", "Pod", new
        yield "DELETED", "Pod", new


def _owner_build(n: int) -> list[Change]:
    out: list[Change] = [("ADDED", "Namespace", namespace("shop"))]
    out.append(("ADDED", "ReplicaSet", replicaset("rs")))
    out.append(("ADDED", "Service", service("svc", {"app": "web"})))
    out += [
        ("ADDED", "Pod", pod(f"p{i}", f"n{i % 50}", labels={"app": "web"}, owner="rs"))
        for i in range(n)
    ]
    return out


def _owner_changes(n: int, count: int) -> Iterator[Change]:
    for i in range(count):  # the ReplicaSet owning n pods is adopted by another Deployment
        yield "MODIFIED", "ReplicaSet", replicaset("rs", deployment=f"dep-{i}")


SCENARIOS = [
    Scenario(
        "services per namespace, same pods",
        "add+delete a Service",
        _services_build,
        _services_changes,
        100,
    ),
    Scenario(
        "pods per Service",
        "add+delete a Service",
        _pods_per_service_build,
        _pods_per_service_changes,
        100,
    ),
    Scenario("labels per pod", "relabel one pod", _labels_build, _labels_changes, 10),
    Scenario("namespaces", "pod IP change", _namespaces_build, _namespaces_changes, 100),
    Scenario(
        "pods per node",
        "IP change + add + delete",
        _pods_per_node_build,
        _pods_per_node_changes,
        100,
    ),
    Scenario("owner fan-out", "ReplicaSet re-owned", _owner_build, _owner_changes, 100),
]


@dataclass
class Measured:
    changes: int
    ops: int
    events: int
    bytes: int
    cpu: float


def measure(scenario: Scenario, n: int, count: int) -> Measured:
    reducer = Reducer()
    subs = Subscriptions(reducer.state)
    for change in scenario.build(n):
        reducer.apply(*change)
    nodes = {entry.node for entry in reducer.state.pods.values()}
    mailboxes = [subs.subscribe(node, FALCO, 0.0) for node in sorted(nodes)]
    for mailbox in mailboxes:
        mailbox.take(reducer.state, 1 << 40)
    ready: set[Mailbox] = set()
    for mailbox in mailboxes:
        mailbox.wake_with(functools.partial(ready.add, mailbox))
    stream = list(scenario.changes(n, count))
    freeze_heap()  # as the collector does once synced: the state out of the cyclic GC's sight
    state = reducer.state
    ops0 = state.ops
    events = size = 0
    t0 = time.process_time()
    for change in stream:
        out = Outcome([], None)  # as the hub applies (here a slice of one change, no sink)
        reducer.apply(*change, out)
        subs.route(out.touched, 0.0)
        for mailbox in ready:
            for sent in mailbox.take(state, 1 << 40):
                events += 1
                size += len(sent.message)
        ready.clear()
    cpu = time.process_time() - t0
    gc.unfreeze()
    # Operations: each change itself plus the items the reducer visited for it.
    return Measured(len(stream), len(stream) + state.ops - ops0, events, size, cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = []
    header = (
        f"{'dimension':<36} {'size':>6} {'ops/chg':>9} {'ev/chg':>8} {'B/chg':>10} "
        f"{'us/chg':>9} {'us/ev':>8}"
    )
    print(header)
    for scenario in SCENARIOS:
        results = []
        for n in (scenario.base, scenario.base * 10):
            runs = [measure(scenario, n, args.changes) for _ in range(args.runs)]
            m = runs[0]
            cpu = statistics.median(r.cpu for r in runs)
            per = m.changes
            print(
                f"{scenario.name:<36} {n:>6} {m.ops / per:>9.1f} {m.events / per:>8.2f} "
                f"{m.bytes / per:>10.0f} {cpu / per * 1e6:>9.1f} "
                f"{cpu / max(m.events, 1) * 1e6:>8.2f}"
            )
            results.append((n, m, cpu))
        (n1, a, cpu_a), (n2, b, cpu_b) = results
        row = {
            "dimension": scenario.name,
            "change": scenario.what,
            "sizes": [n1, n2],
            "ops_per_change": [a.ops / a.changes, b.ops / b.changes],
            "events_per_change": [a.events / a.changes, b.events / b.changes],
            "bytes_per_change": [a.bytes / a.changes, b.bytes / b.changes],
            "cpu_us_per_change": [cpu_a / a.changes * 1e6, cpu_b / b.changes * 1e6],
            "ops_ratio": (b.ops / b.changes) / (a.ops / a.changes),
            "events_ratio": (b.events / b.changes) / (a.events / a.changes),
            "cpu_ratio": (cpu_b / b.changes) / (cpu_a / a.changes),
            "bytes_ratio": (b.bytes / b.changes) / (a.bytes / a.changes),
        }
        rows.append(row)
    print()
    print(
        f"{'dimension (10x)':<36} {'ops ratio':>10} {'events ratio':>13} {'cpu ratio':>10} "
        f"{'bytes ratio':>12}  within 1.5x"
    )
    for row in rows:
        ok = (
            row["ops_ratio"] <= 1.5 * row["events_ratio"]
            and row["cpu_ratio"] <= 1.5 * row["bytes_ratio"]
        )
        print(
            f"{row['dimension']:<36} {row['ops_ratio']:>10.2f} {row['events_ratio']:>13.2f} "
            f"{row['cpu_ratio']:>10.2f} {row['bytes_ratio']:>12.2f}  {'yes' if ok else 'NO'}"
        )
    out = pathlib.Path(__file__).parent / "results" / "complexity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
