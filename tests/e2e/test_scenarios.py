"""SPEC section 6, acceptance scenarios: emulator -> collector -> grpcio, exact payloads."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from metacollector.subscriptions import FALCO_KINDS
from tests.support.env import Env
from tests.support.scenarios import build, converged


def refs(event) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {k: list(v.list) for k, v in event.refs.resources.items()}


async def test_ready_three_times_within_five_seconds(env: Env) -> None:
    with trio.fail_after(5):
        for _ in range(3):
            assert (await env.http("/readyz")).status_code == 200
    assert (await env.http("/healthz")).status_code == 200


async def test_subscribe_unsubscribe_logs(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="broker")  # upstream's logger names
    for i in range(5):
        w = env.watch(f"node-{i}")
        with trio.fail_after(5):  # subscribed
            while env.collector.hub.subscriber_count(f"node-{i}") == 0:
                await trio.sleep(0.01)
        w.close()
        with trio.fail_after(5):
            while not any(
                r.getMessage() == "stream deleted" and getattr(r, "subscriber", "") == f"node-{i}"
                for r in caplog.records
            ):
                await trio.sleep(0.02)
    lines = [
        (r.name, r.getMessage(), getattr(r, "node", None) or getattr(r, "subscriber", None))
        for r in caplog.records
        if r.name.startswith("broker")
    ]
    expected = []
    for i in range(5):
        expected += [
            ("broker.grpc-server", msg, f"node-{i}")
            for msg in (
                "received watch request",
                "starting initial event sync",
                "context canceled, closing connection",
                "stream deleted",
            )
        ]
    assert lines == expected


async def test_initial_sync_exact(env: Env) -> None:
    s = await build(env)
    node = s.nodes[0]
    w = env.watch(node, FALCO_KINDS)
    await converged(env, w)
    uids = {e.uid: e.kind for e in w.current.values()}
    assert uids == {
        s.uid("web0"): "Pod",
        s.uid("agent0"): "Pod",
        s.uid("bare"): "Pod",
        s.uid("bare_rs_pod"): "Pod",
        s.uid("rc_pod"): "Pod",
        s.uid("ns"): "Namespace",
        s.uid("system_ns"): "Namespace",
        s.uid("rs"): "ReplicaSet",
        s.uid("deploy"): "Deployment",
        s.uid("bare_rs"): "ReplicaSet",
        s.uid("rc"): "ReplicationController",
        s.uid("svc_web"): "Service",
        s.uid("svc_front"): "Service",
    }
    assert all(e.reason == "Create" for e in w.events)
    web = w.current[s.uid("web0")]
    pod = s.objs["web0"]
    assert json.loads(web.meta) == {
        "generateName": "web-7d9f-",
        "labels": pod["metadata"]["labels"],
        "name": pod["metadata"]["name"],
        "namespace": s.ns,
        "uid": s.uid("web0"),
    }
    assert web.meta == json.dumps(json.loads(web.meta), sort_keys=True, separators=(",", ":"))
    assert refs(web) == {
        "Namespace": [s.uid("ns")],
        "ReplicaSet": [s.uid("rs")],
        "Deployment": [s.uid("deploy")],
        "Service": sorted([s.uid("svc_web"), s.uid("svc_front")]),
    }
    assert w.current[s.uid("ns")].meta == json.dumps(
        {"labels": {"team": "shop"}, "name": s.ns, "uid": s.uid("ns")}, separators=(",", ":")
    )
    assert not w.current[s.uid("deploy")].HasField("status")


async def test_unknown_node_gets_nothing(env: Env) -> None:
    s = await build(env)
    w, control = env.watch("no-such-node"), env.watch(s.nodes[0])
    await converged(env, control)
    hub = env.collector.hub
    with trio.fail_after(10):  # the unknown node's stream is open and subscribed
        while hub.subscriber_count("no-such-node") == 0:
            await trio.sleep(0.01)
    n = len(control.events)
    await env.cluster.patch("Pod", s.ns, "bare", {"metadata": {"labels": {"x": "1"}}})
    await control.wait_for(lambda c: len(c.events) == n + 1)  # the change went out ...
    assert w.events == [] and w.error is None  # ... and not to the unknown node


async def test_relabel_ip_and_status_churn(env: Env) -> None:
    s = await build(env)
    w = env.watch(s.nodes[0])
    await converged(env, w)
    n = len(w.events)
    await env.cluster.patch("Pod", s.ns, "bare", {"metadata": {"labels": {"x": "1"}}})
    await w.wait_for(lambda w: len(w.events) == n + 1)
    ev = w.events[-1]
    assert ev.reason == "Update" and ev.uid == s.uid("bare")
    assert json.loads(ev.meta)["labels"] == {"x": "1"} and ev.status == "{}"
    assert refs(ev) == {"Namespace": [s.uid("ns")], "Service": []}
    await env.cluster.patch("Pod", s.ns, "bare", {"status": {"podIP": "10.4.4.4"}}, "status")
    await w.wait_for(lambda w: len(w.events) == n + 2)
    assert w.events[-1].reason == "Update" and w.events[-1].status == '{"podIP":"10.4.4.4"}'
    assert json.loads(w.events[-1].meta)["labels"] == {"x": "1"}
    await env.cluster.patch(
        "Pod",
        s.ns,
        "bare",
        {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
        "status",
    )
    await env.cluster.patch("Pod", s.ns, "bare", {"metadata": {"annotations": {"a": "b"}}})
    # phase, conditions and annotations are not sent: a relabel after them (the control) is
    # the next event
    await env.cluster.patch("Pod", s.ns, "bare", {"metadata": {"labels": {"x": "2"}}})
    await w.wait_for(lambda w: len(w.events) >= n + 3)
    assert len(w.events) == n + 3 and json.loads(w.events[-1].meta)["labels"] == {"x": "2"}
    await converged(env, w)


async def test_second_subscriber_same_node(env: Env) -> None:
    s = await build(env)
    first = env.watch(s.nodes[0])
    await converged(env, first)
    n = len(first.events)
    second = env.watch(s.nodes[0])
    await converged(env, second)
    assert len(second.events) == n and all(e.reason == "Create" for e in second.events)
    # the second subscriber's sync sent the first nothing: a change (the control) is the next
    # event both receive
    await env.cluster.patch("Pod", s.ns, "bare", {"metadata": {"labels": {"x": "1"}}})
    await first.wait_for(lambda w: len(w.events) >= n + 1)
    await second.wait_for(lambda w: len(w.events) >= n + 1)
    assert [(e.reason, e.uid) for e in first.events[n:]] == [("Update", s.uid("bare"))]


async def test_pod_deleted_releases_what_only_it_referenced(env: Env) -> None:
    s = await build(env)
    a, b = env.watch(s.nodes[0]), env.watch(s.nodes[1])
    await converged(env, a), await converged(env, b)
    na, nb = len(a.events), len(b.events)
    await env.cluster.delete("Pod", s.ns, "bare-rs-pod")
    await a.wait_for(lambda w: len(w.events) == na + 2)
    assert sorted((e.reason, e.kind, e.uid) for e in a.events[na:]) == [
        ("Delete", "Pod", s.uid("bare_rs_pod")),
        ("Delete", "ReplicaSet", s.uid("bare_rs")),
    ]
    assert all(not e.HasField("meta") for e in a.events[na:])
    await env.cluster.delete("Pod", s.ns, s.objs["web1"]["metadata"]["name"])
    await b.wait_for(lambda w: len(w.events) == nb + 6)
    assert sorted((e.reason, e.kind) for e in b.events[nb:]) == [
        ("Delete", "Deployment"),
        ("Delete", "Namespace"),
        ("Delete", "Pod"),
        ("Delete", "ReplicaSet"),
        ("Delete", "Service"),
        ("Delete", "Service"),
    ]
    await converged(env, a), await converged(env, b)


async def test_deployment_scaled_to_zero(env: Env) -> None:
    s = await build(env)
    watches = [env.watch(n) for n in s.nodes[:2]]
    for w in watches:
        await converged(env, w)
    counts = [len(w.events) for w in watches]
    await env.cluster.patch("Deployment", s.ns, "web", {"spec": {"replicas": 0}})
    await env.cluster.patch("ReplicaSet", s.ns, "web-7d9f", {"spec": {"replicas": 0}})
    for key in ("web0", "web1"):  # what the ReplicaSet controller does
        await env.cluster.delete("Pod", s.ns, s.objs[key]["metadata"]["name"])
    for w, n in zip(watches, counts, strict=True):
        await converged(env, w)
        got = {(e.reason, e.kind, e.uid) for e in w.events[n:]}
        assert ("Delete", "Deployment", s.uid("deploy")) in got
        assert ("Delete", "ReplicaSet", s.uid("rs")) in got


async def test_replacement_pod_on_another_node(env: Env) -> None:
    s = await build(env)
    old, new = env.watch(s.nodes[0]), env.watch(s.nodes[2])
    await converged(env, old), await converged(env, new)
    no, nn = len(old.events), len(new.events)
    await env.cluster.delete("Pod", s.ns, "legacy-1")
    replacement = await env.cluster.pod(
        s.ns, "legacy-2", s.nodes[2], {"app": "legacy"}, s.objs["rc"]
    )
    await converged(env, old), await converged(env, new)
    assert sorted((e.reason, e.kind, e.uid) for e in old.events[no:]) == [
        ("Delete", "Pod", s.uid("rc_pod")),
        ("Delete", "ReplicationController", s.uid("rc")),
    ]
    assert sorted((e.reason, e.kind, e.uid) for e in new.events[nn:]) == sorted(
        [
            ("Create", "Namespace", s.uid("ns")),
            ("Create", "Pod", replacement["metadata"]["uid"]),
            ("Create", "ReplicationController", s.uid("rc")),
        ]
    )


async def test_service_selector_matches_nothing(env: Env) -> None:
    s = await build(env)
    watches = [env.watch(n) for n in s.nodes[:2]]
    for w in watches:
        await converged(env, w)
    counts = [len(w.events) for w in watches]
    await env.cluster.patch("Service", s.ns, "web", {"spec": {"selector": {"app": "nothing"}}})
    for w, n in zip(watches, counts, strict=True):
        await converged(env, w)
        new = w.events[n:]
        assert ("Delete", "Service", s.uid("svc_web")) in {(e.reason, e.kind, e.uid) for e in new}
        [pod_update] = [e for e in new if e.kind == "Pod"]
        assert pod_update.reason == "Update"
        assert refs(pod_update)["Service"] == [s.uid("svc_front")]


async def test_falco_selector_receives_replicationcontrollers(env: Env) -> None:
    s = await build(env)
    w = env.watch(s.nodes[0], FALCO_KINDS)
    await converged(env, w)
    assert w.current[s.uid("rc")].kind == "ReplicationController"
    await env.cluster.patch(
        "ReplicationController", s.ns, "legacy", {"metadata": {"labels": {"v": "2"}}}
    )
    await w.wait_for(
        lambda w: any(e.reason == "Update" and e.kind == "ReplicationController" for e in w.events)
    )
    await converged(env, w)
