"""Server-side Table responses, what ``kubectl get`` asks for: the real printers' columns."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from metacollector.emulator.inprocess import running_emulator
from metacollector.emulator.tables import human_duration
from tests.support.emulator_api import Api, kubectl, needs_kubectl

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"


def columns(table: dict[str, Any], wide: bool = False) -> list[str]:
    return [c["name"] for c in table["columnDefinitions"] if wide or c["priority"] == 0]


def cells(table: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(columns(table, wide=True), row["cells"], strict=True))


async def test_pod_table_columns_and_cells(api: Api) -> None:
    ns = await api.create_ns()
    pod = await api.pod(ns, "p1", node="node-a", labels={"a": "1"})
    r = await api.client.get(f"/api/v1/namespaces/{ns}/pods", headers={"Accept": TABLE})
    assert r.status_code == 200
    table = r.json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"]["resourceVersion"]
    assert columns(table) == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert columns(table, wide=True)[5:] == ["IP", "Node", "Nominated Node", "Readiness Gates"]
    [row] = table["rows"]
    got = cells(table, row)
    assert got["Name"] == "p1" and got["Ready"] == "0/1" and got["Node"] == "node-a"
    assert got["Restarts"] == "0" and got["Nominated Node"] == "<none>"
    # the row's object is PartialObjectMetadata unless includeObject says otherwise
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["uid"] == pod["metadata"]["uid"]

    status = {
        "status": {
            "phase": "Running",
            "podIP": "10.9.8.7",
            "containerStatuses": [
                {"name": "c", "ready": True, "restartCount": 3, "state": {"running": {}}}
            ],
        }
    }
    r = await api.client.patch(
        f"/api/v1/namespaces/{ns}/pods/p1/status",
        json=status,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    r = await api.client.get(
        f"/api/v1/namespaces/{ns}/pods/p1",
        params={"includeObject": "Object"},
        headers={"Accept": TABLE},
    )
    table = r.json()
    [row] = table["rows"]
    got = cells(table, row)
    assert (got["Ready"], got["Status"], got["Restarts"], got["IP"]) == (
        "1/1",
        "Running",
        "3",
        "10.9.8.7",
    )
    assert row["object"]["kind"] == "Pod" and row["object"]["status"]["podIP"] == "10.9.8.7"
    r = await api.client.get(
        f"/api/v1/namespaces/{ns}/pods", params={"includeObject": "None"}, headers={"Accept": TABLE}
    )
    assert "object" not in r.json()["rows"][0]


async def test_tables_of_the_other_kinds(api: Api) -> None:
    expected = {
        "/api/v1/namespaces": ["Name", "Status", "Age"],
        "/api/v1/services": ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age"],
        "/apis/apps/v1/deployments": ["Name", "Ready", "Up-to-date", "Available", "Age"],
        "/apis/apps/v1/replicasets": ["Name", "Desired", "Current", "Ready", "Age"],
        "/apis/apps/v1/daemonsets": [
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Up-to-date",
            "Available",
            "Node Selector",
            "Age",
        ],
        "/api/v1/replicationcontrollers": ["Name", "Desired", "Current", "Ready", "Age"],
        "/api/v1/nodes": ["Name", "Status", "Roles", "Age", "Version"],
    }
    for path, names in expected.items():
        r = await api.client.get(path, headers={"Accept": TABLE})
        assert r.status_code == 200, (path, r.text)
        table = r.json()
        assert columns(table) == names, path
        for row in table["rows"]:
            assert len(row["cells"]) == len(table["columnDefinitions"])
    deployments = (
        await api.client.get("/apis/apps/v1/deployments", headers={"Accept": TABLE})
    ).json()
    assert columns(deployments, wide=True)[5:] == ["Containers", "Images", "Selector"]
    services = (await api.client.get("/api/v1/services", headers={"Accept": TABLE})).json()
    assert columns(services, wide=True)[6:] == ["Selector"]
    # plain JSON is still what a client gets when it does not ask for a Table
    plain = (await api.client.get("/api/v1/namespaces")).json()
    assert plain["kind"] == "NamespaceList"


async def test_watch_events_carry_tables(api: Api) -> None:
    ns = await api.create_ns()
    rv = (await api.client.get(f"/api/v1/namespaces/{ns}/pods")).json()["metadata"][
        "resourceVersion"
    ]
    await api.pod(ns, "w1", node="node-b")
    with trio.fail_after(5):
        async with api.client.stream(
            "GET",
            f"/api/v1/namespaces/{ns}/pods",
            params={"watch": "1", "resourceVersion": rv},
            headers={"Accept": TABLE},
        ) as r:
            async for line in r.aiter_lines():
                event = json.loads(line)
                break
    assert event["type"] == "ADDED" and event["object"]["kind"] == "Table"
    table = event["object"]
    assert cells(table, table["rows"][0])["Node"] == "node-b"


def test_human_duration_matches_kubectl() -> None:
    cases = {
        0: "0s",
        119: "119s",
        120: "2m",
        185: "3m5s",
        600: "10m",
        3 * 3600: "3h",
        3 * 3600 + 120: "3h2m",
        30 * 3600: "30h",
        3 * 86400 + 3600: "3d1h",
        30 * 86400: "30d",
        800 * 86400: "2y70d",
        3000 * 86400: "8y",
    }
    assert {s: human_duration(s) for s in cases} == cases


@pytest.mark.kubectl
@needs_kubectl
async def test_kubectl_get_pods_wide_shows_node_and_ip() -> None:
    async with running_emulator(nodes=2, pods_per_node=2, tls=True) as emu, emu.client() as client:
        pods = (await client.get("/api/v1/pods")).json()["items"]
        header, *lines = (await kubectl(emu, "get", "pods", "-A", "-o", "wide")).splitlines()
        assert header.split() == [
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES",
        ]
        shown = {(line.split()[1], line.split()[6], line.split()[7]) for line in lines}
        expected = {
            (p["metadata"]["name"], p["status"]["podIP"], p["spec"]["nodeName"]) for p in pods
        }
        assert shown == expected and len(expected) == len(pods)
