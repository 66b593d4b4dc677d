"""Scale benchmark: emulator + collector + subscriber swarm, each in its own process.

    python bench/scale.py --nodes 1000 --pods-per-node 30 --subscribers 1000 --churn-rate 200 --duration 30

Phases: (1) cold start: collector process start -> /readyz 200, RSS after sync; (2) initial
sync: S subscribers (one TCP connection each, in worker processes) connect at once; every
table is verified against view(node) computed independently from a fresh list of the
emulator's objects; (3) churn at R changes/s for T s: commit-to-receipt latency (stamped
label), RSS and CPU of the collector, tables verified again afterwards; (4) API-server
offload: emulator bytes/requests/watches for the collector vs naive per-node agents (run for
--naive-agents nodes and scaled linearly to S, said so in the table). Prints one table and
writes bench/results/scale-<nodes>x<pods>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import trio
from _common import HERE, emulator_command, proc_stats, report, start_emulator, stop

from metacollector import allocator
from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS, selected_kinds
from metacollector.testing import collector_command, free_port, wait_ready

PY = sys.executable
# upstream's name for the time from a change to its send (SEND_LATENCY here)
SEND_LATENCY = "meta_collector_broker_queue_duration_seconds"
GC_PAUSE = "metacollector_gc_pause_seconds"
FALCO = selected_kinds(FALCO_KINDS)


# --- an independent, indexed statement of view(N) from raw API objects -----------------------
def meta_json(kind: str, m: dict[str, Any]) -> str:
    doc: dict[str, Any] = {"name": m["name"], "uid": m["uid"]}
    if m.get("generateName"):
        doc["generateName"] = m["generateName"]
    if m.get("labels"):
        doc["labels"] = m["labels"]
    if kind != "Namespace":
        doc["namespace"] = m.get("namespace", "")
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def controller(m: dict[str, Any]) -> dict[str, Any] | None:
    return next((o for o in m.get("ownerReferences") or () if o.get("controller")), None)


def expected_digests(objects: dict[str, list[dict[str, Any]]], nodes: list[str]) -> dict[str, str]:
    by_uid = {kind: {o["metadata"]["uid"]: o for o in items} for kind, items in objects.items()}
    ns_uid = {o["metadata"]["name"]: o["metadata"]["uid"] for o in objects["Namespace"]}
    services: dict[str, list[dict[str, Any]]] = {}
    for svc in objects["Service"]:
        if (svc.get("spec") or {}).get("selector"):
            services.setdefault(svc["metadata"]["namespace"], []).append(svc)
    pods_by_node: dict[str, list[dict[str, Any]]] = {}
    for p in objects["Pod"]:
        pods_by_node.setdefault((p.get("spec") or {}).get("nodeName", ""), []).append(p)

    def event(kind: str, o: dict[str, Any], refs: dict[str, list[str]] | None) -> bytes:
        e = pb.Event(
            reason="Create",
            uid=o["metadata"]["uid"],
            kind=kind,
            meta=meta_json(kind, o["metadata"]),
        )
        if refs is not None:
            ip = (o.get("status") or {}).get("podIP")
            e.status = json.dumps({"podIP": ip} if ip else {}, separators=(",", ":"))
            e.refs.SetInParent()
            for k, uids in refs.items():
                e.refs.resources[k].list.extend(uids)
        return e.SerializeToString(deterministic=True)

    out = {}
    for node in nodes:
        table: dict[str, bytes] = {}
        for p in pods_by_node.get(node, []):
            m = p["metadata"]
            labels = m.get("labels") or {}
            refs: dict[str, list[str]] = {
                "Namespace": [ns_uid[m["namespace"]]] if m["namespace"] in ns_uid else []
            }
            related: list[tuple[str, str]] = [("Namespace", u) for u in refs["Namespace"]]
            owner = controller(m)
            if owner:
                refs[owner["kind"]] = [owner["uid"]]
                if owner["kind"] in ("ReplicaSet", "DaemonSet", "ReplicationController"):
                    related.append((owner["kind"], owner["uid"]))
                rs = (
                    by_uid["ReplicaSet"].get(owner["uid"])
                    if owner["kind"] == "ReplicaSet"
                    else None
                )
                grand = controller(rs["metadata"]) if rs else None
                if grand:
                    refs[grand["kind"]] = [grand["uid"]]
                    if grand["kind"] == "Deployment":
                        related.append(("Deployment", grand["uid"]))
            matched = sorted(
                s["metadata"]["uid"]
                for s in services.get(m["namespace"], [])
                if all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
            )
            refs["Service"] = matched
            related += [("Service", u) for u in matched]
            table[m["uid"]] = event("Pod", p, refs)
            for kind, uid in related:
                obj = by_uid[kind].get(uid)
                if obj is not None and kind in FALCO:
                    table[uid] = event(kind, obj, None)
        h = hashlib.sha256()
        for uid in sorted(table):
            h.update(uid.encode() + b"\0" + table[uid] + b"\0")
        out[node] = h.hexdigest()
    return out


async def fetch_objects(url: str, token: str) -> dict[str, list[dict[str, Any]]]:
    paths = {
        "Pod": "/api/v1/pods",
        "Namespace": "/api/v1/namespaces",
        "Service": "/api/v1/services",
        "ReplicationController": "/api/v1/replicationcontrollers",
        "Deployment": "/apis/apps/v1/deployments",
        "ReplicaSet": "/apis/apps/v1/replicasets",
        "DaemonSet": "/apis/apps/v1/daemonsets",
    }
    out: dict[str, list[dict[str, Any]]] = {}
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as c:
        for kind, path in paths.items():
            items: list[dict[str, Any]] = []
            cont = ""
            while True:
                r = await c.get(
                    path, params={"limit": 5000, **({"continue": cont} if cont else {})}
                )
                body = r.json()
                items += body["items"]
                cont = body["metadata"].get("continue", "")
                if not cont:
                    break
            out[kind] = items
    return out


async def stats(url: str, token: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
        return (await c.get("/admin/stats")).json()  # type: ignore[no-any-return]


async def reset_stats(url: str, token: str) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
        await c.post("/admin/reset-stats", json={})


async def histogram_buckets(port: int, name: str, labels: str = "") -> dict[float, float]:
    """A histogram of the collector's /metrics, cumulative counts by bucket edge (label sets
    containing ``labels`` summed): send latency (change reached the hub -> written), GC pauses."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket") and labels in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            edge = float("inf") if le == "+Inf" else float(le)
            out[edge] = out.get(edge, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def histogram_totals(port: int, name: str) -> tuple[float, float]:
    """(count, sum) of a histogram of the collector's /metrics, over all its label sets."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    totals = {"_count": 0.0, "_sum": 0.0}
    for line in text.splitlines():
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        for suffix in totals:
            if metric == name + suffix:
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["_count"], totals["_sum"]


def longest_bucket(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket (ms) of the longest observation between two scrapes."""
    delta = {le: count - before.get(le, 0.0) for le, count in after.items()}
    total = delta.get(float("inf"), 0.0)
    if not total:
        return "none"
    edge = min(le for le, count in delta.items() if count >= total)
    return f"<= {edge * 1000:g}" if edge != float("inf") else "> 5000"


def bucket_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[float, str]:
    """Upper-bound quantiles (bucket edges, ms) of the observations between two scrapes."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = delta[-1][1] if delta else 0
    out = {}
    for q in (0.5, 0.99):
        edge = next((le for le, count in delta if total and count >= q * total), float("inf"))
        out[q] = f"<= {edge * 1000:g}" if edge != float("inf") else "> 10000"
    return out


class Workers:
    """Worker processes speaking JSON lines over stdin/stdout."""

    def __init__(self, script: str, jobs: list[dict[str, Any]]) -> None:
        self.procs = [
            subprocess.Popen(
                [PY, str(HERE / script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for _ in jobs
        ]
        for p, job in zip(self.procs, jobs, strict=True):
            assert p.stdin is not None
            p.stdin.write(json.dumps(job) + "\n")
            p.stdin.flush()

    async def wait_for(self, event: str, timeout: float) -> list[dict[str, Any]]:
        def read(p: subprocess.Popen[str]) -> dict[str, Any]:
            assert p.stdout is not None
            while True:
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError("worker exited")
                msg = json.loads(line)
                if msg.get("event") == event:
                    return msg  # type: ignore[no-any-return]

        with trio.fail_after(timeout):
            results = []
            for p in self.procs:
                results.append(await trio.to_thread.run_sync(read, p, abandon_on_cancel=True))
            return results

    def send(self, command: dict[str, Any]) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps(command) + "\n")
            p.stdin.flush()

    def stop(self) -> None:
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


async def churn_process(
    url: str, token: str, rate: float, duration: float, seed: int
) -> dict[str, Any]:
    """run_churn in its own process over lean keep-alive connections (bench/emulator.py's churn
    role): the driver stamps changes, so it must not share a CPU-bound process with anything."""
    command = [PY, str(HERE / "emulator.py"), "--role", "churn", "--url", url, "--token", token]
    command += ["--rate", str(rate), "--duration", str(duration), "--seed", str(seed)]
    done = await trio.run_process(command, capture_stdout=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = pathlib.Path(tempfile.mkdtemp())
    kubeconfig = tmp / "kubeconfig"
    emu_port, grpc_port, http_port = free_port(), free_port(), free_port()
    token = "bench-token"
    command = emulator_command(
        emu_port,
        kubeconfig,
        args.nodes,
        args.pods_per_node,
        "--history-size=200000",
        "--bookmark-interval=30",
        token=token,
    )
    emulator = await trio.to_thread.run_sync(start_emulator, command)
    url = f"http://127.0.0.1:{emu_port}"
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "pods": args.nodes * args.pods_per_node,
        "subscribers": args.subscribers,
        "churn_rate": args.churn_rate,
        "duration_s": args.duration,
        "machine": f"{os.cpu_count()} cores",
        "collector_allocator": args.allocator,
    }
    await reset_stats(url, token)
    t0 = time.monotonic()
    collector = subprocess.Popen(
        collector_command(
            kubeconfig,
            grpc_port,
            http_port,
            http_port,
            "--log-level=warning",
            "--max-connections=100000",
        ),
        env=allocator.environment(os.environ, args.allocator == "hugepages"),
    )
    workers = naive = None
    try:
        await wait_ready(f"http://127.0.0.1:{http_port}/readyz", 600)
        result["cold_start_s"] = round(time.monotonic() - t0, 2)
        st = await stats(url, token)
        result["collector_startup_requests"] = st["requests_by_agent"].get("metacollector", 0)
        result["collector_startup_api_bytes"] = st["bytes_by_agent"].get("metacollector", 0)
        result["rss_after_ready_mb"] = round(proc_stats(collector.pid)["rss_mb"], 1)

        nodes = [f"node-{i}" for i in range(args.nodes)][: args.subscribers]
        t1 = time.monotonic()
        before_sync = proc_stats(collector.pid)
        gc_before_sync = await histogram_totals(http_port, GC_PAUSE)
        workers = Workers(
            "swarm.py",
            [
                {"host": "127.0.0.1", "port": grpc_port, "nodes": part, "quiet": 1.0}
                for part in split(nodes, args.workers)
            ],
        )
        synced = await workers.wait_for("synced", 900)
        result["initial_sync_s"] = round(max(s["sync_s"] for s in synced), 2)
        result["initial_sync_events"] = sum(s["events"] for s in synced)
        result["initial_sync_events_per_s"] = round(
            result["initial_sync_events"] / result["initial_sync_s"]
        )
        after_sync = proc_stats(collector.pid)
        sync_cpu = after_sync["cpu_s"] - before_sync["cpu_s"]
        result["collector_cpu_s_during_sync"] = round(sync_cpu, 2)
        result["swarm_cpu_s_during_sync"] = round(sum(s["cpu_s"] for s in synced), 2)
        gc_after_sync = await histogram_totals(http_port, GC_PAUSE)
        result["collector_gc_during_sync"] = (
            f"{gc_after_sync[0] - gc_before_sync[0]:.0f} collections, "
            f"{gc_after_sync[1] - gc_before_sync[1]:.2f} s"
        )
        result["initial_sync_mb"] = round(sum(s["bytes"] for s in synced) / 1e6, 1)
        result["rss_after_sync_mb"] = round(after_sync["rss_mb"], 1)
        result["sync_wall_s"] = round(time.monotonic() - t1, 2)

        expected = expected_digests(await fetch_objects(url, token), nodes)
        workers.send({"cmd": "report"})
        reports = await workers.wait_for("report", 300)
        got = {k: v for r in reports for k, v in r["digests"].items()}
        result["sync_tables_exact"] = f"{sum(got[n] == expected[n] for n in nodes)}/{len(nodes)}"

        # --- churn -------------------------------------------------------------------------
        hist_before = await histogram_buckets(http_port, SEND_LATENCY)
        gc_before = await histogram_buckets(http_port, GC_PAUSE)
        full_gc_before = await histogram_buckets(http_port, GC_PAUSE, 'generation="2"')
        workers.send({"cmd": "reset_latencies"})
        await reset_stats(url, token)
        before = proc_stats(collector.pid)
        churn = await churn_process(url, token, args.churn_rate, args.duration, seed=7)
        after = proc_stats(collector.pid)
        st = await stats(url, token)
        result["churn_changes"] = sum(churn["done"].values())
        result["collector_cpu_cores_during_churn"] = round(
            (after["cpu_s"] - before["cpu_s"]) / args.duration, 3
        )
        await trio.sleep(3)
        workers.send({"cmd": "report"})
        reports = await workers.wait_for("report", 300)
        latencies = sorted(x for r in reports for x in r["latencies_ms"])
        if latencies:
            result["latency_ms_p50"] = round(statistics.median(latencies), 1)
            result["latency_ms_p99"] = round(latencies[int(len(latencies) * 0.99) - 1], 1)
            result["latency_ms_max"] = round(latencies[-1], 1)
            result["latency_samples"] = len(latencies)
        quantiles = bucket_quantiles(hist_before, await histogram_buckets(http_port, SEND_LATENCY))
        gc_after = await histogram_buckets(http_port, GC_PAUSE)
        result["collector_gc_pauses_during_churn"] = gc_after.get(float("inf"), 0.0) - (
            gc_before.get(float("inf"), 0.0)
        )
        result["collector_gc_longest_pause_ms"] = longest_bucket(gc_before, gc_after)
        full_gc = await histogram_buckets(http_port, GC_PAUSE, 'generation="2"')
        result["collector_full_gc_during_churn"] = full_gc.get(float("inf"), 0.0) - (
            full_gc_before.get(float("inf"), 0.0)
        )
        result["collector_send_latency_ms_p50"] = quantiles[0.5]
        result["collector_send_latency_ms_p99"] = quantiles[0.99]
        result["rss_after_churn_mb"] = round(proc_stats(collector.pid)["rss_mb"], 1)
        result["rss_peak_mb"] = round(proc_stats(collector.pid)["hwm_mb"], 1)
        expected = expected_digests(await fetch_objects(url, token), nodes)
        got = {k: v for r in reports for k, v in r["digests"].items()}
        result["churn_tables_exact"] = f"{sum(got[n] == expected[n] for n in nodes)}/{len(nodes)}"
        collector_churn_bytes = st["bytes_by_agent"].get("metacollector", 0)
        collector_requests = st["requests_by_agent"].get("metacollector", 0)
        result["collector_churn_api_bytes"] = collector_churn_bytes
        workers.stop()
        workers = None

        # --- offload: naive per-node agents ---------------------------------------------------
        agents = min(args.naive_agents, args.nodes)
        collector.terminate()
        collector.wait(30)
        await reset_stats(url, token)
        naive = Workers(
            "naive.py",
            [
                {"url": url, "token": token, "nodes": part}
                for part in split(nodes[:agents], args.workers)
            ],
        )
        await naive.wait_for("synced", 900)
        st = await stats(url, token)
        naive_startup = st["bytes_by_agent"].get("naive-agent", 0)
        naive_startup_requests = st["requests_by_agent"].get("naive-agent", 0)
        await reset_stats(url, token)
        await churn_process(url, token, args.churn_rate, args.duration, seed=11)
        await trio.sleep(2)
        st = await stats(url, token)
        scale = args.subscribers / agents
        naive_churn = st["bytes_by_agent"].get("naive-agent", 0)
        naive_total = (naive_startup + naive_churn) * scale
        ours_total = result["collector_startup_api_bytes"] + collector_churn_bytes
        result["naive_agents_measured"] = agents
        result["naive_startup_api_bytes_scaled"] = round(naive_startup * scale)
        result["naive_churn_api_bytes_scaled"] = round(naive_churn * scale)
        result["naive_requests_scaled"] = round(
            (naive_startup_requests + st["requests_by_agent"].get("naive-agent", 0)) * scale
        )
        result["collector_requests"] = collector_requests + result.pop(
            "collector_startup_requests", 0
        )
        result["naive_watches_scaled"] = round(agents * 7 * scale)
        result["api_bytes_ratio_naive_over_collector"] = round(naive_total / ours_total, 1)
    finally:
        for w in (workers, naive):
            if w is not None:
                w.stop()
        stop(collector, emulator)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods-per-node", type=int, default=30)
    ap.add_argument("--subscribers", type=int, default=None, help="default: one per node")
    ap.add_argument("--churn-rate", type=float, default=200)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--workers", type=int, default=4, help="subscriber swarm processes")
    ap.add_argument(
        "--naive-agents", type=int, default=100, help="naive agents actually run (scaled to S)"
    )
    ap.add_argument(
        "--allocator",
        choices=["python", "hugepages"],
        default="python",
        help="collector's allocator: python (as shipped) or hugepages (metacollector/allocator.py)",
    )
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    args.subscribers = min(args.subscribers or args.nodes, args.nodes)
    report(trio.run(run, args), args.output or f"scale-{args.nodes}x{args.pods_per_node}.json")


if __name__ == "__main__":
    main()
