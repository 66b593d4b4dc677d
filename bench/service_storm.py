"""A storm of Services selecting the same pods, against real processes (issue 18): the latency of
a healthy subscriber's changes, /healthz, and the collector's CPU while it lasts.

Processes (2 cores shared by all): the emulator, the collector, a storm driver POSTing
``--services`` Services in one namespace all selecting the same ``--pods`` pods on node-0, a
subscriber of node-0 draining its stream raw (it gets every Service and a ~38 B x k Update of
each selected pod per flush), and this script: it patches a canary pod on node-1 every
``--interval`` s and times PATCH response -> the event on a node-1 subscriber (grpcio, its raw
bytes searched for the new label), and probes /healthz every 0.1 s.

    python bench/service_storm.py [--services 5000 --pods 10]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import httpx
from _common import cpu_seconds, emulator_command

from metacollector.proto import metadata_pb2 as pb
from metacollector.subscriptions import FALCO_KINDS
from metacollector.testing import collector_command, free_port

FALCO = FALCO_KINDS
TOKEN = "storm-token"


def storm_role(args: argparse.Namespace) -> None:
    """POST the Services, ``--concurrency`` at a time; print how long it took."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    start = time.monotonic()

    def worker(first: int) -> None:
        with httpx.Client(base_url=args.url, headers=headers) as client:
            for i in range(first, args.services, args.concurrency):
                body = {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": f"svc-{i:05d}"},
                    "spec": {"ports": [{"port": 80}], "selector": {"app": "storm"}},
                }
                r = client.post("/api/v1/namespaces/storm/services", json=body)
                assert r.status_code == 201, r.text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{time.monotonic() - start:.2f}", flush=True)


def drain_role(args: argparse.Namespace) -> None:
    """A node-0 subscriber that counts messages and bytes without parsing them."""
    channel = grpc.insecure_channel(args.target)
    watch = channel.unary_stream(
        "/metadata.Metadata/Watch", request_serializer=pb.Selector.SerializeToString
    )
    messages = size = 0
    try:
        for raw in watch(pb.Selector(nodeName="node-0", resourceKinds={k: "" for k in FALCO})):
            messages += 1
            size += len(raw)
    except grpc.RpcError:
        pass
    print(messages, size, flush=True)


class Canary:
    """A node-1 subscriber; records when each ``"rev":"N"`` label is first seen."""

    def __init__(self, target: str) -> None:
        self.seen: dict[str, float] = {}
        self.channel = grpc.insecure_channel(target)
        watch = self.channel.unary_stream(
            "/metadata.Metadata/Watch", request_serializer=pb.Selector.SerializeToString
        )
        self.call = watch(pb.Selector(nodeName="node-1", resourceKinds={k: "" for k in FALCO}))
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for raw in self.call:
                at = time.monotonic()
                start = raw.find(b'"rev":"')
                if start >= 0:
                    rev = raw[start + 7 : raw.index(b'"', start + 7)].decode()
                    self.seen.setdefault(rev, at)
        except grpc.RpcError:
            pass

    def wait(self, rev: str, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while rev not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"canary rev {rev} never arrived")
            time.sleep(0.001)
        return self.seen[rev]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--role", choices=("main", "storm", "drain"), default="main")
    ap.add_argument("--url", default="")
    ap.add_argument("--target", default="")
    args = ap.parse_args()
    if args.role == "storm":
        return storm_role(args)
    if args.role == "drain":
        return drain_role(args)

    tmp = pathlib.Path(tempfile.mkdtemp())
    kubeconfig = tmp / "kubeconfig"
    api = free_port()
    grpc_port, metrics_port, health_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[str]] = []

    def spawn(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        procs.append(proc)
        return proc

    try:
        # spawn() runs its argv with sys.executable: the shared commands without it
        emulator = spawn(*emulator_command(api, kubeconfig, 4, 30, token=TOKEN)[1:])
        assert emulator.stdout is not None
        emulator.stdout.readline()  # "emulator listening on ..."
        url = f"http://127.0.0.1:{api}"
        rest = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        rest.post("/api/v1/namespaces", json={"metadata": {"name": "storm"}}).raise_for_status()

        def pod(name: str, node: str, labels: dict[str, str]) -> None:
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
            }
            rest.post("/api/v1/namespaces/storm/pods", json=body).raise_for_status()

        for i in range(args.pods):
            pod(f"sel-{i}", "node-0", {"app": "storm"})
        pod("canary", "node-1", {"app": "canary", "rev": "0"})
        collector = spawn(*collector_command(kubeconfig, grpc_port, metrics_port, health_port)[1:])
        probe = httpx.Client(base_url=f"http://127.0.0.1:{health_port}", timeout=5)
        deadline = time.monotonic() + 60
        while True:
            try:
                if probe.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "collector never ready"
            time.sleep(0.1)
        target = f"127.0.0.1:{grpc_port}"
        drainer = spawn(__file__, "--role", "drain", "--target", target)
        canary = Canary(target)
        canary.wait("0")
        cpu0 = cpu_seconds(collector.pid)
        storm = spawn(
            __file__,
            "--role",
            "storm",
            "--url",
            url,
            "--services",
            str(args.services),
            "--concurrency",
            str(args.concurrency),
        )
        probes: list[float] = []
        stop = threading.Event()

        def probing() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                assert probe.get("/healthz").status_code == 200
                probes.append(time.monotonic() - t0)
                time.sleep(0.1)

        prober = threading.Thread(target=probing)
        prober.start()
        latencies: list[float] = []
        rev = 0
        while storm.poll() is None:
            rev += 1
            patch = {"metadata": {"labels": {"app": "canary", "rev": str(rev)}}}
            r = rest.patch(
                "/api/v1/namespaces/storm/pods/canary",
                json=patch,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            r.raise_for_status()
            sent = time.monotonic()
            latencies.append(canary.wait(str(rev)) - sent)
            time.sleep(args.interval)
        stop.set()
        prober.join()
        assert storm.stdout is not None
        storm_s = float(storm.stdout.read().strip())
        # Wait for the collector to hold every Service, then read its CPU.
        deadline = time.monotonic() + 120
        while True:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            held = next(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('metacollector_objects{kind="Service"}')
            )
            if held >= args.services:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cpu = cpu_seconds(collector.pid) - cpu0
        t0 = time.monotonic()
        collector.send_signal(signal.SIGTERM)
        rc = collector.wait(10)
        sigterm_s = time.monotonic() - t0
        assert drainer.stdout is not None
        messages, size = map(int, drainer.communicate(timeout=10)[0].split())
        result = {
            "services": args.services,
            "selected_pods": args.pods,
            "storm_s": storm_s,
            "canary_changes": len(latencies),
            "canary_latency_ms_p50_p99_max": [
                round(pct(latencies, q) * 1000, 1) for q in (0.5, 0.99, 1.0)
            ],
            "canary_latency_ms_mean": round(statistics.mean(latencies) * 1000, 1),
            "healthz_ms_p50_p99_max": [round(pct(probes, q) * 1000, 1) for q in (0.5, 0.99, 1.0)],
            "healthz_probes": len(probes),
            "collector_cpu_s": round(cpu, 2),
            "node0_messages": messages,
            "node0_mib": round(size / 2**20),
            "sigterm_exit_s": round(sigterm_s, 2),
            "exit_code": rc,
        }
        width = max(map(len, result))
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")
        out = pathlib.Path(__file__).parent / "results" / "service_storm.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
