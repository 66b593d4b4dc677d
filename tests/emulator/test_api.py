"""The emulator held to the real API server's behaviour, through plain HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from metacollector.emulator.inprocess import running_emulator
from tests.support.emulator_api import (
    KUBECTL,
    MERGE,
    Api,
    kubectl,
    kubectl_env,
    needs_kubectl,
    watch_lines,
)
from tests.support.env import needs_emulator as emulator_only

PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
SMP = {"Content-Type": "application/strategic-merge-patch+json"}


@emulator_only
async def test_auth_required(api: Api) -> None:
    assert api.emulator is not None
    async with httpx.AsyncClient(base_url=api.emulator.url) as anon:
        r = await anon.get("/api/v1/pods")
        assert (
            r.status_code == 401
            and r.json()["kind"] == "Status"
            and r.json()["reason"] == "Unauthorized"
        )
        r = await anon.get("/api/v1/pods", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401


async def test_discovery(api: Api) -> None:
    assert "v1" in (await api.client.get("/api")).json()["versions"]
    groups = {g["name"] for g in (await api.client.get("/apis")).json()["groups"]}
    assert "apps" in groups
    core = {r["name"]: r for r in (await api.client.get("/api/v1")).json()["resources"]}
    assert {
        "pods",
        "namespaces",
        "services",
        "replicationcontrollers",
        "nodes",
        "pods/status",
    } <= set(core)
    assert core["pods"]["namespaced"] and not core["namespaces"]["namespaced"]
    apps = {r["name"] for r in (await api.client.get("/apis/apps/v1")).json()["resources"]}
    assert {"deployments", "replicasets", "daemonsets"} <= apps
    assert (await api.client.get("/version")).json()["major"] == "1"


async def test_crud_server_fields_and_errors(api: Api) -> None:
    ns = await api.create_ns()
    created = await api.pod(ns, "p1", labels={"a": "1"})
    meta = created["metadata"]
    assert (
        meta["uid"]
        and meta["resourceVersion"]
        and meta["creationTimestamp"]
        and meta["namespace"] == ns
    )
    r = await api.client.post(
        f"/api/v1/namespaces/{ns}/pods",
        json={
            "metadata": {"generateName": "gen-"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        },
    )
    assert r.status_code == 201 and r.json()["metadata"]["name"].startswith("gen-")
    dup = await api.client.post(
        f"/api/v1/namespaces/{ns}/pods",
        json={"metadata": {"name": "p1"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
    )
    assert dup.status_code == 409 and dup.json()["reason"] == "AlreadyExists"
    got = await api.client.get(f"/api/v1/namespaces/{ns}/pods/p1")
    assert got.json()["metadata"]["uid"] == meta["uid"]
    missing = await api.client.get(f"/api/v1/namespaces/{ns}/pods/nope")
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
    stale = dict(created, metadata={**meta, "resourceVersion": "1", "labels": {"a": "2"}})
    r = await api.client.put(f"/api/v1/namespaces/{ns}/pods/p1", json=stale)
    assert r.status_code == 409 and r.json()["reason"] == "Conflict"
    fresh = dict(created, metadata={**meta, "labels": {"a": "2"}})
    r = await api.client.put(f"/api/v1/namespaces/{ns}/pods/p1", json=fresh)
    assert r.status_code == 200 and int(r.json()["metadata"]["resourceVersion"]) > int(
        meta["resourceVersion"]
    )
    r = await api.client.patch(
        f"/api/v1/namespaces/{ns}/pods/p1", json={"metadata": {"labels": {"b": "3"}}}, headers=SMP
    )
    assert r.json()["metadata"]["labels"] == {"a": "2", "b": "3"}
    r = await api.client.patch(
        f"/api/v1/namespaces/{ns}/pods/p1",
        json={"metadata": {"labels": {"a": None}}},
        headers=MERGE,
    )
    assert r.json()["metadata"]["labels"] == {"b": "3"}
    r = await api.client.patch(
        f"/api/v1/namespaces/{ns}/pods/p1/status",
        json={"status": {"podIP": "10.1.1.1"}},
        headers=MERGE,
    )
    assert r.status_code == 200 and r.json()["status"]["podIP"] == "10.1.1.1"
    r = await api.client.patch(
        f"/api/v1/namespaces/{ns}/pods/p1", json={"status": {"podIP": "6.6.6.6"}}, headers=MERGE
    )
    assert r.json()["status"]["podIP"] == "10.1.1.1"  # status only through the subresource
    assert (
        await api.client.patch(
            f"/api/v1/namespaces/{ns}/pods/p1",
            content=b"labels: x",
            headers={"Content-Type": "text/plain"},
        )
    ).status_code == 415
    invalid = await api.client.post(f"/api/v1/namespaces/{ns}/pods", json={"metadata": {}})
    assert invalid.status_code == 422 and invalid.json()["reason"] == "Invalid"
    assert (await api.client.delete(f"/api/v1/namespaces/{ns}/pods/p1")).status_code == 200
    assert (await api.client.get(f"/api/v1/namespaces/{ns}/pods/p1")).status_code == 404
    r = await api.deployment(ns, "d", [{"name": "c", "image": "x"}])
    assert r.status_code == 201 and r.json()["metadata"]["generation"] == 1
    r = await api.client.patch(
        f"/apis/apps/v1/namespaces/{ns}/deployments/d",
        json={"spec": {"replicas": 3}},
        headers=MERGE,
    )
    assert r.json()["metadata"]["generation"] == 2
    cluster_wide = (await api.client.get("/apis/apps/v1/deployments")).json()["items"]
    assert any(d["metadata"]["namespace"] == ns for d in cluster_wide)


async def test_one_monotonic_resource_version(api: Api) -> None:
    ns = await api.create_ns()
    rvs = [int((await api.pod(ns, f"m{i}"))["metadata"]["resourceVersion"]) for i in range(5)]
    r = await api.client.post(
        f"/api/v1/namespaces/{ns}/services",
        json={"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}},
    )
    rvs.append(int(r.json()["metadata"]["resourceVersion"]))
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)
    listed = int((await api.client.get("/api/v1/pods")).json()["metadata"]["resourceVersion"])
    assert listed >= rvs[-1]


async def test_pagination_is_a_consistent_snapshot(api: Api) -> None:
    ns = await api.create_ns()
    for i in range(7):
        await api.pod(ns, f"pg{i}")
    r = await api.client.get(f"/api/v1/namespaces/{ns}/pods", params={"limit": 3})
    body = r.json()
    names = [p["metadata"]["name"] for p in body["items"]]
    snapshot_rv = body["metadata"]["resourceVersion"]
    await api.pod(ns, "pg-late")  # not visible to the paginated list
    await api.client.delete(f"/api/v1/namespaces/{ns}/pods/pg6")
    cont = body["metadata"]["continue"]
    while cont:
        body = (
            await api.client.get(
                f"/api/v1/namespaces/{ns}/pods", params={"limit": 3, "continue": cont}
            )
        ).json()
        assert body["metadata"]["resourceVersion"] == snapshot_rv
        names += [p["metadata"]["name"] for p in body["items"]]
        cont = body["metadata"].get("continue")
    assert names == [f"pg{i}" for i in range(7)]


@emulator_only
async def test_expired_continue_token(api: Api) -> None:
    ns = await api.create_ns()
    for i in range(3):
        await api.pod(ns, f"x{i}")
    body = (await api.client.get(f"/api/v1/namespaces/{ns}/pods", params={"limit": 1})).json()
    assert api.emulator is not None
    await api.emulator.admin("/admin/compact")
    r = await api.client.get(
        f"/api/v1/namespaces/{ns}/pods",
        params={"limit": 1, "continue": body["metadata"]["continue"]},
    )
    assert r.status_code == 410 and r.json()["reason"] == "Expired"


async def test_resource_version_semantics(api: Api) -> None:
    current = (await api.client.get("/api/v1/pods")).json()["metadata"]["resourceVersion"]
    assert (
        await api.client.get("/api/v1/pods", params={"resourceVersion": "0"})
    ).status_code == 200
    r = await api.client.get(
        "/api/v1/pods", params={"resourceVersion": current, "resourceVersionMatch": "NotOlderThan"}
    )
    assert r.status_code == 200 and int(r.json()["metadata"]["resourceVersion"]) >= int(current)
    r = await api.client.get(
        "/api/v1/pods", params={"resourceVersion": current, "resourceVersionMatch": "Exact"}
    )
    assert r.status_code == 200


async def test_label_and_field_selectors(api: Api) -> None:
    ns = await api.create_ns()
    await api.pod(ns, "a", "n1", {"app": "web", "tier": "front"})
    await api.pod(ns, "b", "n2", {"app": "web"})
    await api.pod(ns, "c", "n1", {"app": "db"})

    async def names(**params: str) -> list[str]:
        items = (await api.client.get(f"/api/v1/namespaces/{ns}/pods", params=params)).json()[
            "items"
        ]
        return sorted(p["metadata"]["name"] for p in items)

    assert await names(labelSelector="app=web") == ["a", "b"]
    assert await names(labelSelector="app==web,tier=front") == ["a"]
    assert await names(labelSelector="app!=web") == ["c"]
    assert await names(labelSelector="app in (db, cache)") == ["c"]
    assert await names(labelSelector="app notin (db)") == ["a", "b"]
    assert await names(labelSelector="tier") == ["a"]
    assert await names(labelSelector="!tier") == ["b", "c"]
    assert await names(fieldSelector="spec.nodeName=n1") == ["a", "c"]
    assert await names(fieldSelector="spec.nodeName!=n1") == ["b"]
    assert await names(fieldSelector="metadata.name=b") == ["b"]
    cluster = (
        await api.client.get(
            "/api/v1/pods", params={"fieldSelector": f"metadata.namespace={ns},spec.nodeName=n2"}
        )
    ).json()["items"]
    assert [p["metadata"]["name"] for p in cluster] == ["b"]
    bad = await api.client.get("/api/v1/pods", params={"fieldSelector": "status.phase=Running"})
    assert bad.status_code == 400


async def test_metadata_only(api: Api) -> None:
    r = await api.client.get("/apis/apps/v1/replicasets", headers={"Accept": PARTIAL_LIST})
    body = r.json()
    assert body["kind"] == "PartialObjectMetadataList" and body["apiVersion"] == "meta.k8s.io/v1"
    assert body["items"] and set(body["items"][0]) <= {"metadata", "kind", "apiVersion"}
    assert "spec" not in body["items"][0]


async def test_watch_from_rv_with_selectors_bookmarks_and_timeout(api: Api) -> None:
    ns = await api.create_ns()
    rv = (await api.client.get(f"/api/v1/namespaces/{ns}/pods")).json()["metadata"][
        "resourceVersion"
    ]
    await api.pod(ns, "w1", "n1", {"app": "x"})
    await api.pod(ns, "w2", "n2", {"app": "y"})
    events = await watch_lines(
        api.client,
        f"/api/v1/namespaces/{ns}/pods",
        {
            "resourceVersion": rv,
            "labelSelector": "app=x",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "2",
        },
        3,
    )
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "w1"
    assert all(e["object"]["metadata"].get("name") != "w2" for e in events)
    if api.emulator is not None:  # real servers send bookmarks only every minute or so
        assert any(e["type"] == "BOOKMARK" for e in events)
    start = trio.current_time()
    events = await watch_lines(
        api.client,
        f"/api/v1/namespaces/{ns}/pods",
        {"resourceVersion": rv, "timeoutSeconds": "1"},
        100,
        timeout=10,
    )
    assert trio.current_time() - start < 5 and len(events) == 2  # ended cleanly by timeoutSeconds


@emulator_only
async def test_watch_expiry_both_forms(api: Api) -> None:
    assert api.emulator is not None
    ns = await api.create_ns()
    old = (await api.client.get("/api/v1/pods")).json()["metadata"]["resourceVersion"]
    for i in range(250):  # history is 200 events
        await api.client.patch(
            f"/api/v1/namespaces/{ns}", json={"metadata": {"labels": {"i": str(i)}}}, headers=MERGE
        )
    r = await api.client.get("/api/v1/namespaces", params={"watch": "1", "resourceVersion": old})
    assert r.status_code == 410 and r.json()["reason"] == "Expired"
    current = (await api.client.get("/api/v1/pods")).json()["metadata"]["resourceVersion"]

    async def compact_once_watched() -> None:
        assert api.emulator is not None
        watchers = api.emulator.emulator.store.watchers["pods"]
        with trio.fail_after(5):
            while not watchers:  # the watch is open: compaction ends it in-band
                await trio.sleep(0.01)
        await api.emulator.admin("/admin/compact")

    async with trio.open_nursery() as n:
        n.start_soon(compact_once_watched)
        events = await watch_lines(api.client, "/api/v1/pods", {"resourceVersion": current}, 1)
    assert events[-1]["type"] == "ERROR" and events[-1]["object"]["code"] == 410
    assert events[-1]["object"]["kind"] == "Status" and events[-1]["object"]["reason"] == "Expired"


async def test_send_initial_events(api: Api) -> None:
    events = await watch_lines(
        api.client,
        "/api/v1/namespaces",
        {
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "allowWatchBookmarks": "true",
        },
        1000,
        timeout=2,
    )
    listed = (await api.client.get("/api/v1/namespaces")).json()["items"]
    added = [e for e in events if e["type"] == "ADDED"]
    assert len(added) >= len(listed)
    end = [
        e
        for e in events
        if e["type"] == "BOOKMARK"
        and (e["object"]["metadata"].get("annotations") or {}).get("k8s.io/initial-events-end")
        == "true"
    ]
    assert end and events.index(end[0]) >= len(listed)


@emulator_only
async def test_streaming_lists_switch_answers_422() -> None:
    async with running_emulator(streaming_lists=False) as emu, emu.client() as client:
        r = await client.get(
            "/api/v1/pods",
            params={
                "watch": "1",
                "sendInitialEvents": "true",
                "resourceVersionMatch": "NotOlderThan",
                "allowWatchBookmarks": "true",
            },
        )
        assert r.status_code == 422 and r.json()["reason"] == "Invalid"


@emulator_only
async def test_faults_and_stats(api: Api) -> None:
    emu = api.emulator
    assert emu is not None
    await emu.set_faults(throttle_requests=2, retry_after=3)
    r = await api.client.get("/api/v1/pods")
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    await api.client.get("/api/v1/pods")
    assert (await api.client.get("/api/v1/pods")).status_code == 200
    await emu.set_faults(error_requests=1)
    assert (await api.client.get("/api/v1/pods")).status_code == 500
    ns = await api.create_ns()
    rv = (await api.client.get("/api/v1/pods")).json()["metadata"]["resourceVersion"]
    await emu.set_faults(malformed_lines=1)
    await api.pod(ns, "m")
    events_raw = []
    with trio.move_on_after(2):
        async with api.client.stream(
            "GET", "/api/v1/pods", params={"watch": "1", "resourceVersion": rv}
        ) as s:
            async for chunk in s.aiter_bytes():
                events_raw.append(chunk)
                if b'"ADDED"' in b"".join(events_raw):
                    break
    lines = b"".join(events_raw).split(b"\n")
    with pytest.raises(ValueError):
        json.loads(lines[0])
    assert json.loads(lines[1])["type"] == "ADDED"
    await emu.set_faults(drop_watch_after=1)
    await api.pod(ns, "d1")
    with pytest.raises(httpx.RemoteProtocolError):
        async with api.client.stream(
            "GET", "/api/v1/pods", params={"watch": "1", "resourceVersion": rv}
        ) as s:
            async for _ in s.aiter_bytes():
                pass
    await emu.set_faults(drop_watch_after=0)
    await emu.admin("/admin/restart")
    r = await api.client.get("/api/v1/pods", params={"watch": "1", "resourceVersion": rv})
    assert r.status_code == 410  # a new epoch: old resourceVersions are gone
    stats = await emu.stats()
    assert (
        stats["watches_opened"] >= 2
        and stats["bytes_served"] > 0
        and stats["requests"]["list pods"]
        if "list pods" in stats["requests"]
        else stats["requests"]["get pods"]
    )


@needs_kubectl
@emulator_only
async def test_kubectl_get_create_label_delete_watch(tmp_path: Path) -> None:
    async with running_emulator(
        nodes=2, pods_per_node=2, tls=True
    ) as emu:  # kubectl sends tokens over TLS only
        assert "node-agent" in await kubectl(emu, "get", "pods", "-A", "-o", "wide")
        manifest = tmp_path / "pod.yaml"
        manifest.write_text(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kc\n  namespace: team-0\nspec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: nginx\n"
        )
        watcher = await trio.lowlevel.open_process(
            [KUBECTL, "get", "pods", "-n", "team-0", "-w", "--request-timeout=0"],
            stdout=-1,
            env=kubectl_env(emu),
        )  # type: ignore[list-item]
        assert watcher.stdout is not None
        seen = b""
        with trio.fail_after(10):  # the list is printed: the watch resumes from its version
            while b"NAME" not in seen:
                seen += await watcher.stdout.receive_some(4096)
        assert "pod/kc created" in await kubectl(emu, "create", "-f", str(manifest))
        assert "labeled" in await kubectl(emu, "label", "pod", "kc", "-n", "team-0", "color=blue")
        assert "color=blue" in await kubectl(
            emu, "get", "pod", "kc", "-n", "team-0", "--show-labels"
        )
        assert "deleted" in await kubectl(
            emu, "delete", "pod", "kc", "-n", "team-0", "--wait=false"
        )
        with trio.move_on_after(5):
            while b"kc" not in seen:
                seen += await watcher.stdout.receive_some(4096)
        watcher.kill()
        await watcher.wait()
        assert b"kc" in seen
