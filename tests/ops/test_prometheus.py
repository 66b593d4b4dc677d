"""A real Prometheus (Debian's package) scraping the collector with its default content
negotiation (OpenMetrics first): the target is up, `promtool check metrics` is clean, and every
PromQL expression of our dashboard and of upstream's dashboard whose metrics we emit returns
data once a subscriber connected and churn ran."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from metacollector.app import Running, serve
from metacollector.emulator.inprocess import EmulatorHandle, running_emulator
from metacollector.kube.config import load_kubeconfig
from metacollector.testing import free_port
from tests.support.cluster import Cluster
from tests.support.env import local_settings
from tests.support.grpc_watch import GrpcWatch

ROOT = Path(__file__).resolve().parents[2]
OUR_DASHBOARD = ROOT / "helm" / "metacollector" / "dashboards" / "metacollector.json"
UPSTREAM_PANELS = Path(__file__).parent / "data" / "upstream_dashboard_panels.json"
# Prometheus 2.42's default Accept header for a scrape (scrape/scrape.go, acceptHeader)
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
JOB, NAMESPACE, POD = "k8s-metacollector", "falco", "falco-k8s-metacollector-0"
# The upstream panels that show data here (docs/operations.md has the table and the reasons).
UPSTREAM_SHOWN = {
    "Controller CPU Usage",
    "Controller Memory Usage",
    "Subscribers",
    "Events Added To Broker Queue Per Type",
    "Events Dispatched Per Resource Kind",
    "Total Events Dispatched",
    "Events From Api Server Per collector",
    "Events Received from api-server",
    "Seconds For Items Stay In Broker Queue (before being proccesed) (P50, P90, P99)",
}
SELECTOR_NAME = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


@pytest.fixture
async def collector(nursery: trio.Nursery) -> AsyncIterator[tuple[EmulatorHandle, Running]]:
    async with running_emulator(nodes=2, pods_per_node=3) as emu:
        settings = local_settings()
        cfg = load_kubeconfig(str(emu.kubeconfig))
        running = await nursery.start(
            lambda task_status: serve(settings, kubeconfig=cfg, task_status=task_status)
        )
        yield emu, running
        running.cancel_scope.cancel()


class Prometheus:
    def __init__(self, binary: Path, target: str, tmp: Path) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {"targets": [target], "labels": {"namespace": NAMESPACE, "pod": POD}}
                    ],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    async def api(self, path: str, **params: str) -> Any:
        r = await self.client.get(f"/api/v1/{path}", params=params)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[Any]:
        data = await self.api("query", query=expr)
        return list(data["result"])

    async def wait(self, what: str, check: Any, timeout: float = 30) -> Any:
        """Poll ``check`` (an async callable) until it returns a truthy value."""
        with trio.move_on_after(timeout):
            while True:
                assert self.proc.poll() is None, self.proc.communicate()[1]
                try:
                    found = await check()
                except httpx.TransportError:
                    found = None
                if found:
                    return found
                await trio.sleep(0.2)
        raise AssertionError(f"Prometheus: no {what} within {timeout}s")

    async def ready(self) -> None:
        """/-/ready answers 200 once Prometheus serves queries (503 while it starts)."""

        async def check() -> bool:
            return (await self.client.get("/-/ready")).status_code == 200

        await self.wait("readiness", check)

    async def close(self) -> None:
        await self.client.aclose()
        self.proc.terminate()
        await trio.to_thread.run_sync(self.proc.wait, 10)


def dashboard_exprs(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if t.get("expr")]


def substituted(expr: str) -> str:
    return expr.replace("$job", JOB).replace("$namespace", NAMESPACE).replace("$pod", POD)


async def churn(emu: EmulatorHandle, grpc_port: int) -> None:
    """Relabel, delete and create pods of node-0 (the subscriber's node); a second subscriber
    comes and goes; every watch gets a 410 (compaction): restarts and relists."""
    visitor = GrpcWatch(f"127.0.0.1:{grpc_port}", "node-1").start()
    await visitor.wait_for(lambda w: len(w.events) > 0)
    visitor.close()
    await emu.admin("/admin/compact")
    async with emu.client() as client:
        cluster = Cluster(client)
        pods = [
            p
            for p in (await client.get("/api/v1/pods")).json()["items"]
            if p["spec"].get("nodeName") == "node-0"
        ]
        ns = pods[0]["metadata"]["namespace"]
        await cluster.patch(
            "Pod", ns, pods[0]["metadata"]["name"], {"metadata": {"labels": {"churn": "1"}}}
        )
        gone = pods[1]["metadata"]
        await cluster.delete("Pod", gone["namespace"], gone["name"])
        await cluster.pod(ns, "churned", "node-0", labels={"churn": "1"})


async def test_prometheus_scrapes_openmetrics_and_every_dashboard_query_has_data(
    prometheus: Path, collector: tuple[EmulatorHandle, Running], tmp_path: Path
) -> None:
    emu, running = collector
    target = f"127.0.0.1:{running.metrics_port}"
    async with httpx.AsyncClient(base_url=f"http://{target}") as http:
        # what Prometheus asks for by default gets OpenMetrics, which its strict parser takes
        om = await http.get("/metrics", headers={"accept": PROMETHEUS_ACCEPT})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        families = [f.name for f in text_string_to_metric_families(om.text)]
        assert len(families) == len(set(families))
        text = (await http.get("/metrics")).text  # the Prometheus text format
    promtool = subprocess.run(
        [str(prometheus / "promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert promtool.returncode == 0 and not promtool.stdout.strip(), promtool.stdout
    emitted = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }

    server = Prometheus(prometheus / "prometheus", target, tmp_path)
    watch = GrpcWatch(f"127.0.0.1:{running.grpc_port}", "node-0").start()
    try:
        await server.ready()

        async def target_up() -> Any:
            targets = (await server.api("targets"))["activeTargets"]  # [] until discovered
            return [t for t in targets if t["health"] == "up" and t["lastError"] == ""]

        await server.wait("healthy target", target_up)
        await watch.wait_for(lambda w: len(w.events) > 0)
        await churn(emu, running.grpc_port)
        deleted = (
            'sum(meta_collector_collector_event_api_server_received{name="pod-collector",'
            'type="delete"}) > 0'
        )
        await server.wait("scrape after the churn", lambda: server.query(deleted))
        await server.wait(
            "sent deletion",
            lambda: server.query('meta_collector_broker_dispatched_events{type="Delete"} > 0'),
        )

        async def has_data(expr: str) -> Any:
            return await server.wait(f"data for {expr}", lambda: server.query(substituted(expr)))

        for expr in dashboard_exprs(OUR_DASHBOARD):
            await has_data(expr)
            # a fault counter's panel shows 0 rather than "No data" before its first fault;
            # its own query must still be valid PromQL
            fault_counter, zero, _ = expr.partition(" or on() vector(0)")
            if zero:
                await server.query(substituted(fault_counter))
        shown = set()
        for panel in json.loads(UPSTREAM_PANELS.read_text())["panels"]:
            for expr in panel["exprs"]:
                if set(SELECTOR_NAME.findall(expr)) <= emitted:
                    await has_data(expr)
                    shown.add(panel["title"])
        assert shown == UPSTREAM_SHOWN
        assert len(await target_up()) == 1  # still up, no scrape error
    finally:
        watch.close()
        await server.close()
