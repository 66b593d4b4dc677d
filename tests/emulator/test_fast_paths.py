"""The emulator's fast paths keep the API server's semantics: versions in history stay as they
were committed (new versions share subtrees instead of deep copies), queued watch events written
together arrive complete and in order, and both churn drivers stamp changes only when asked to."""

from __future__ import annotations

from typing import Any

import trio

from metacollector.emulator.churn import BENCH_STAMP, ChurnStats, run_churn
from tests.support.emulator_api import MERGE, Api, watch_lines
from tests.support.env import needs_emulator as emulator_only

PARTIAL = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


async def _rv(api: Api, path: str) -> str:
    return str((await api.client.get(path)).json()["metadata"]["resourceVersion"])


async def test_history_keeps_each_committed_version(api: Api) -> None:
    ns = await api.create_ns()
    rv = await _rv(api, f"/api/v1/namespaces/{ns}/pods")
    pod = await api.pod(ns, "v", labels={"a": "1"})
    path = f"/api/v1/namespaces/{ns}/pods/v"
    r = await api.client.patch(path, json={"metadata": {"labels": {"a": "2"}}}, headers=MERGE)
    assert r.status_code == 200, r.text
    assert (await api.client.delete(path)).status_code == 200
    events = await watch_lines(
        api.client, f"/api/v1/namespaces/{ns}/pods", {"resourceVersion": rv}, 3
    )
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert [e["object"]["metadata"]["labels"]["a"] for e in events] == ["1", "2", "2"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] == int(pod["metadata"]["resourceVersion"])
    assert events[0]["object"]["spec"] == events[1]["object"]["spec"] == pod["spec"]


async def test_spec_patch_leaves_older_metadata_alone(api: Api) -> None:
    ns = await api.create_ns()
    rv = await _rv(api, f"/apis/apps/v1/namespaces/{ns}/deployments")
    body = {
        "metadata": {"name": "d"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": []}},
        },
    }
    r = await api.client.post(f"/apis/apps/v1/namespaces/{ns}/deployments", json=body)
    assert r.status_code == 201, r.text
    created = r.json()["metadata"]
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/d"
    r = await api.client.patch(path, json={"spec": {"replicas": 3}}, headers=MERGE)
    assert r.status_code == 200, r.text
    # metadata-only lines are encoded from the stored objects when first asked for: the first
    # version must still carry its own resourceVersion and generation
    events = await watch_lines(
        api.client,
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {"resourceVersion": rv},
        2,
        headers={"Accept": PARTIAL},
    )
    assert events[0]["object"]["kind"] == "PartialObjectMetadata"
    assert events[0]["object"]["metadata"]["resourceVersion"] == created["resourceVersion"]
    assert events[0]["object"]["metadata"]["generation"] == 1
    assert events[1]["object"]["metadata"]["generation"] == 2
    assert "spec" not in events[1]["object"]


@emulator_only
async def test_queued_events_arrive_complete_and_in_order(api: Api) -> None:
    assert api.emulator is not None
    store = api.emulator.emulator.store
    ns = await api.create_ns()
    rv = await _rv(api, f"/api/v1/namespaces/{ns}/pods")
    n = 700  # more than one write batch, and more than the fixture's history holds
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        path = f"/api/v1/namespaces/{ns}/pods"
        events.extend(await watch_lines(api.client, path, {"resourceVersion": rv}, n))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        while not store.watchers["pods"]:
            await trio.sleep(0.01)
        for i in range(n):  # all queued to the live watcher with no checkpoint in between
            meta = {"name": f"q{i}", "namespace": ns}
            store.create("pods", {"metadata": meta, "spec": {"nodeName": "x"}})
    assert [e["object"]["metadata"]["name"] for e in events] == [f"q{i}" for i in range(n)]


async def _churn_events(api: Api, body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The first ``n`` pod watch events of an in-process churn started with ``body``, once the
    churn has finished."""
    assert api.emulator is not None
    rv = await _rv(api, "/api/v1/pods")
    await api.emulator.admin("/admin/churn", body)
    events = await watch_lines(api.client, "/api/v1/pods", {"resourceVersion": rv}, n)
    assert len(events) == n
    with trio.fail_after(5):
        while not (await api.emulator.stats())["churn"]["finished"]:
            await trio.sleep(0.05)
    return events


def _labels(events: list[dict[str, Any]], key: str) -> list[str]:
    return [
        e["object"]["metadata"]["labels"][key]
        for e in events
        if key in e["object"]["metadata"].get("labels", {})
    ]


@emulator_only
async def test_store_churn_stamps_only_when_asked(api: Api) -> None:
    """The demo's churn relabels with a plain version label; a bench asks for the stamp."""
    assert api.emulator is not None
    plain = await _churn_events(api, {"rate": 200, "duration": 0.5, "seed": 9}, 50)
    assert _labels(plain, "version") and not _labels(plain, BENCH_STAMP)
    stamped = await _churn_events(
        api, {"rate": 200, "duration": 0.5, "stamp_label": BENCH_STAMP}, 50
    )
    assert _labels(stamped, BENCH_STAMP)
    churn = (await api.emulator.stats())["churn"]
    assert 50 <= sum(churn["done"].values()) <= 110 and churn["failed"] == 0


async def _rest_churn(api: Api, stamp_label: str | None, seed: int) -> list[dict[str, Any]]:
    """Churn through REST in short rounds until it has relabelled and created pods, with no
    failed change; the pods afterwards."""
    stats = ChurnStats()
    with trio.fail_after(20):
        while not (stats.done.get("relabel") and stats.done.get("create")):
            seed += 100  # each round its own pod names
            await run_churn(
                api.client,
                100,
                duration=0.3,
                concurrency=4,
                seed=seed,
                stamp_label=stamp_label,
                stats=stats,
            )
    assert stats.failed == 0
    return (await api.client.get("/api/v1/pods")).json()["items"]  # type: ignore[no-any-return]


@emulator_only
async def test_rest_churn_stamps_only_when_asked(api: Api) -> None:
    def labelled(pods: list[dict[str, Any]], key: str) -> int:
        return sum(key in p["metadata"].get("labels", {}) for p in pods)

    plain = await _rest_churn(api, None, seed=7)
    assert labelled(plain, "version") and not labelled(plain, BENCH_STAMP)
    stamped = await _rest_churn(api, BENCH_STAMP, seed=8)
    assert labelled(stamped, BENCH_STAMP)
