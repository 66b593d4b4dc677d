"""CloudEvents output: every attribute and the data, binary and structured, parsed by the SDK on
a real receiver; delivery under faults; coalescing; Knative env (K_SINK, K_CE_OVERRIDES)."""

from __future__ import annotations

import json

import pytest
import trio

from metacollector import metrics
from metacollector.cloudevents import (
    CloudEventsSink,
    SinkConfigError,
    coalesce,
    settings_from_env,
)
from metacollector.model import KINDS
from metacollector.testing.receiver import Receiver, data_of, start_receiver
from tests.support.cloudevents import change, settings
from tests.support.env import local_settings

SUBJECTS = {
    "Pod": "/api/v1/namespaces/shop/pods/obj-pod",
    "Namespace": "/api/v1/namespaces/obj-namespace",
    "Service": "/api/v1/namespaces/shop/services/obj-service",
    "ReplicationController": "/api/v1/namespaces/shop/replicationcontrollers/obj-replicationcontroller",
    "Deployment": "/apis/apps/v1/namespaces/shop/deployments/obj-deployment",
    "ReplicaSet": "/apis/apps/v1/namespaces/shop/replicasets/obj-replicaset",
    "DaemonSet": "/apis/apps/v1/namespaces/shop/daemonsets/obj-daemonset",
}


async def deliver_all(
    receiver: Receiver, sink: CloudEventsSink, count: int, timeout: float = 10
) -> None:
    with trio.fail_after(timeout):
        while len(receiver.events) < count:
            await trio.sleep(0.01)


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_every_kind_and_reason_mapped_exactly(nursery: trio.Nursery, mode: str) -> None:
    receiver = await start_receiver(nursery)
    sink = CloudEventsSink(settings(receiver, mode=mode, senders=1))
    await nursery.start(sink.run)
    sent = []
    for kind in KINDS:
        for reason in ("Create", "Update", "Delete"):
            c = change(kind, reason, uid=f"{kind}-{reason}", labels={"app": "web"})
            sent.append(c)
            sink.offer(c)
            await deliver_all(receiver, sink, len(sent))  # one at a time: kept in order
    by_uid = {data_of(e)["uid"]: e for e in receiver.events}
    for c in sent:
        e = by_uid[c.uid]
        past = {"Create": "created", "Update": "updated", "Delete": "deleted"}[c.reason]
        assert e.get_type() == f"io.falco.metacollector.{c.kind.lower()}.{past}.v1"
        assert e.get_source() == "/metacollector/test"
        assert e.get_subject() == SUBJECTS[c.kind]
        assert e.get_specversion() == "1.0" and e.get_id()
        ext = e.get_extension
        assert (ext("k8skind"), ext("k8snamespace"), ext("k8sname"), ext("k8suid")) == (
            c.kind,
            c.namespace,
            c.name,
            c.uid,
        )
        assert ext("k8snode") == ("n1" if c.kind == "Pod" else None)
        data = data_of(e)
        assert data["reason"] == c.reason and data["kind"] == c.kind and data["uid"] == c.uid
        assert data["meta"] == json.loads(c.meta)  # a JSON object, not a string
        if c.kind == "Pod" and c.reason != "Delete":
            assert data["status"] == {"podIP": "10.0.0.1"}
            assert data["refs"] == {"Namespace": ["ns-uid"], "Service": []}
        else:
            assert data["status"] is None and data["refs"] is None
    content_types = {r.get("content-type") for r in receiver.requests}
    if mode == "binary":
        assert content_types == {"application/json"}
        assert all(r.get("ce-type") for r in receiver.requests)
    else:
        assert content_types == {"application/cloudevents+json"}


def test_coalescing_rules() -> None:
    create, update, delete = (change("Pod", r) for r in ("Create", "Update", "Delete"))
    merged = coalesce(create, update)
    assert merged.reason == "Create" and merged.meta == update.meta
    assert coalesce(create, delete).reason == "Delete"
    assert coalesce(update, delete).reason == "Delete"
    assert coalesce(update, update).reason == "Update"


async def test_receiver_down_then_up_every_final_state_arrives_drops_counted(
    nursery: trio.Nursery,
) -> None:
    receiver = await start_receiver(nursery, up=False)
    sink = CloudEventsSink(settings(receiver, queue_size=50, senders=2, max_attempts=1000))
    await nursery.start(sink.run)
    dropped = metrics.CE_DROPPED.labels("queue_full")._value.get()
    for round_ in range(5):
        for i in range(40):
            sink.offer(
                change(
                    "Pod", "Update" if round_ else "Create", uid=f"p{i}", labels={"r": str(round_)}
                )
            )
    for i in range(30):  # beyond the bound: the oldest pending non-deletes are dropped
        sink.offer(change("Service", "Create", uid=f"s{i}"))
    for i in range(5):
        sink.offer(change("Namespace", "Delete", uid=f"gone{i}"))
    await trio.sleep(0.5)
    receiver.up = True
    with trio.fail_after(15):
        while sink.pending or sink.in_flight:
            await trio.sleep(0.05)
    assert metrics.CE_DROPPED.labels("queue_full")._value.get() - dropped == 40 + 30 + 5 - 50
    assert all(receiver.final.get(f"gone{i}") == "deleted" for i in range(5))  # Deletes survive
    delivered_pods = {u: d for u, d in receiver.final.items() if u.startswith("p")}
    assert all(d["meta"]["labels"] == {"r": "4"} for d in delivered_pods.values())  # latest wins


async def test_429_retry_after_is_honoured(nursery: trio.Nursery) -> None:
    answers = iter([(429, {"Retry-After": "1"}), (202, {})])
    receiver = await start_receiver(nursery, respond=lambda e: next(answers))
    sink = CloudEventsSink(settings(receiver, senders=1, backoff_max=5.0))
    await nursery.start(sink.run)
    retried = metrics.CE_RETRIED._value.get()
    start = trio.current_time()
    sink.offer(change("Deployment"))
    await deliver_all(receiver, sink, 1)
    assert trio.current_time() - start >= 0.5  # waited (jitter 0.5x..1.5x of 1 s)
    assert metrics.CE_RETRIED._value.get() - retried == 1
    assert len(receiver.requests) == 2


async def test_400_is_not_retried(nursery: trio.Nursery) -> None:
    receiver = await start_receiver(
        nursery, respond=lambda e: (400, {}) if data_of(e)["uid"] == "bad" else (202, {})
    )
    sink = CloudEventsSink(settings(receiver, senders=1))
    await nursery.start(sink.run)
    failed = metrics.CE_FAILED.labels("http_4xx")._value.get()
    sink.offer(change("Service", uid="bad"))
    with trio.fail_after(5):
        while metrics.CE_FAILED.labels("http_4xx")._value.get() == failed:
            await trio.sleep(0.01)
    sink.offer(change("Service", uid="control"))  # delivered after any retry of "bad" would be
    await deliver_all(receiver, sink, 1)
    assert [data_of(e)["uid"] for e in receiver.events] == ["control"]
    assert len(receiver.requests) == 2


async def test_slow_receiver_never_blocks_offer(nursery: trio.Nursery) -> None:
    receiver = await start_receiver(nursery, delay=1.0)
    sink = CloudEventsSink(settings(receiver, senders=1))
    await nursery.start(sink.run)
    start = trio.current_time()
    for i in range(2000):
        sink.offer(change("Pod", uid=f"u{i}"))
    assert trio.current_time() - start < 0.5  # offer is synchronous and O(1)
    assert len(sink.pending) >= 1990


async def test_shutdown_flushes_within_deadline(nursery: trio.Nursery) -> None:
    receiver = await start_receiver(nursery)
    sink = CloudEventsSink(settings(receiver, senders=1))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(sink.run)
            for i in range(20):
                sink.offer(change("Pod", uid=f"f{i}"))
            scope.cancel()
    assert len(receiver.events) == 20


def test_knative_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K_SINK", raising=False)
    assert settings_from_env(None, "/s") is None
    monkeypatch.setenv("K_SINK", "http://broker-ingress/default/default")
    monkeypatch.setenv("K_CE_OVERRIDES", '{"extensions": {"cluster": "prod", "team": 7}}')
    s = settings_from_env(None, "/s", mode="structured")
    assert s is not None and s.url == "http://broker-ingress/default/default"
    assert dict(s.overrides) == {"cluster": "prod", "team": "7"} and s.mode == "structured"
    assert settings_from_env("http://flag", "/s").url == "http://flag"  # type: ignore[union-attr]
    monkeypatch.setenv("K_CE_OVERRIDES", "{not json")
    with pytest.raises(SinkConfigError, match="K_CE_OVERRIDES"):
        settings_from_env(None, "/s")


async def test_overrides_and_filters_applied(nursery: trio.Nursery) -> None:
    receiver = await start_receiver(nursery)
    sink = CloudEventsSink(
        settings(
            receiver,
            overrides={"cluster": "prod"},
            kinds=frozenset({"Pod"}),
            namespaces=frozenset({"shop"}),
            senders=1,
        )
    )
    await nursery.start(sink.run)
    sink.offer(change("Service"))  # filtered by kind
    from dataclasses import replace

    sink.offer(replace(change("Pod", uid="elsewhere"), namespace="other"))  # filtered by namespace
    sink.offer(change("Pod", uid="kept"))  # the control, offered after the filtered ones
    await deliver_all(receiver, sink, 1)
    assert [data_of(e)["uid"] for e in receiver.events] == ["kept"]
    assert len(receiver.requests) == 1
    assert receiver.events[0].get_extension("cluster") == "prod"


async def test_end_to_end_from_cluster_changes(nursery: trio.Nursery) -> None:
    from metacollector.app import serve
    from metacollector.emulator.inprocess import running_emulator
    from metacollector.kube.config import load_kubeconfig
    from tests.support.cluster import Cluster

    receiver = await start_receiver(nursery)
    async with running_emulator(nodes=2, pods_per_node=3) as emu:
        st = local_settings(
            cloudevents_sink=receiver.url,
        )
        cfg = load_kubeconfig(str(emu.kubeconfig))
        running = await nursery.start(
            lambda task_status: serve(st, kubeconfig=cfg, task_status=task_status)
        )
        async with emu.client() as client:
            cluster = Cluster(client)
            pod = await cluster.pod("team-0", "ce-pod", "node-1", {"app": "ce"})
            uid = pod["metadata"]["uid"]

            async def state(check: object) -> None:
                with trio.fail_after(10):
                    while not check():  # type: ignore[operator]
                        await trio.sleep(0.05)

            await state(lambda: uid in receiver.final)
            await cluster.patch("Pod", "team-0", "ce-pod", {"metadata": {"labels": {"app": "ce2"}}})
            await state(lambda: receiver.final[uid]["meta"]["labels"] == {"app": "ce2"})
            await cluster.delete("Pod", "team-0", "ce-pod")
            await state(lambda: receiver.final[uid] == "deleted")
        types = [e.get_type() for e in receiver.events if e.get_extension("k8suid") == uid]
        assert types == [
            "io.falco.metacollector.pod.created.v1",
            "io.falco.metacollector.pod.updated.v1",
            "io.falco.metacollector.pod.deleted.v1",
        ]
        e = next(e for e in receiver.events if e.get_extension("k8suid") == uid)
        assert e.get_subject() == "/api/v1/namespaces/team-0/pods/ce-pod"
        assert e.get_extension("k8snode") == "node-1"
        assert e.get_source().startswith("/metacollector/")
        running.cancel_scope.cancel()


async def test_each_sender_has_a_request_in_flight(nursery: trio.Nursery) -> None:
    """4 senders and a sink answering in 1 s: 4 requests in flight (one shared wake-up gave 1)."""
    receiver = await start_receiver(nursery, delay=1.0)
    sink = CloudEventsSink(settings(receiver, senders=4))
    await nursery.start(sink.run)
    for i in range(12):
        sink.offer(change("Pod", uid=f"w{i}"))
        await trio.sleep(0)  # offered one by one, as the hub does
    with trio.fail_after(5):
        while receiver.max_in_flight < 4:
            await trio.sleep(0.01)
    await deliver_all(receiver, sink, 12)
    assert receiver.max_in_flight == 4


@pytest.mark.parametrize(
    "retry_after", ["inf", "1e300", "99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"]
)
async def test_retry_after_capped_at_backoff_max(nursery: trio.Nursery, retry_after: str) -> None:
    answers = iter([(503, {"Retry-After": retry_after}), (202, {})])
    receiver = await start_receiver(nursery, respond=lambda e: next(answers))
    sink = CloudEventsSink(settings(receiver, senders=1, backoff_max=0.3))
    await nursery.start(sink.run)
    retried = metrics.CE_RETRIED._value.get()
    sink.offer(change("Deployment"))
    await deliver_all(receiver, sink, 1, timeout=5)  # uncapped: never (or in 10^11 s)
    assert metrics.CE_RETRIED._value.get() - retried == 1  # the Retry-After answer came first
    assert len(receiver.requests) == 2


async def test_redirect_is_its_own_failure_reason(nursery: trio.Nursery) -> None:
    receiver = await start_receiver(nursery, respond=lambda e: (307, {"Location": "http://x/"}))
    sink = CloudEventsSink(settings(receiver, senders=1))
    await nursery.start(sink.run)
    failed_3xx = metrics.CE_FAILED.labels("http_3xx")._value.get()
    failed_4xx = metrics.CE_FAILED.labels("http_4xx")._value.get()
    sink.offer(change("Service"))
    with trio.fail_after(5):
        while metrics.CE_FAILED.labels("http_3xx")._value.get() == failed_3xx:
            await trio.sleep(0.01)
    assert metrics.CE_FAILED.labels("http_4xx")._value.get() == failed_4xx
    assert len(receiver.requests) == 1  # neither followed nor retried


def test_event_id_is_a_function_of_the_object_version() -> None:
    from dataclasses import replace

    from metacollector.cloudevents import event_id, to_cloudevent

    v1 = replace(change("Pod", "Create", uid="p"), version="41", cause_version="41")
    assert event_id(v1) == event_id(replace(v1, observed_at=9.0, cause_version="77"))
    assert event_id(v1) == event_id(replace(v1, reason="Update"))  # one state, one event
    assert event_id(v1) != event_id(replace(v1, version="42"))
    assert event_id(v1) != event_id(replace(v1, refs={"Service": ["s"]}))  # refs moved alone
    gone = replace(v1, reason="Delete", version="50", status=None, refs=None)
    assert event_id(gone) == event_id(replace(gone, version="49", meta=b"{}"))
    assert event_id(gone) != event_id(replace(gone, uid="q"))
    assert to_cloudevent(v1, "/s").get_id() == event_id(v1)
