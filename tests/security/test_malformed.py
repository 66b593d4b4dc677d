"""Shapes a real API server never sends are refused, counted and never served.

Injected into the emulator in-process: raw watch lines go to the pods watchers (the emulator's
REST API only ever makes well-formed objects) and raw list items into its store, served at the
next relist. Each test has a control, a valid object sent alongside: it arrives, so the refused
ones were processed, and then the subscriber's table is checked for them."""

from __future__ import annotations

import json
from typing import Any

import trio

from metacollector import metrics
from metacollector.emulator.store import Event, Store, Stored
from tests.support.env import Env, environment, needs_emulator
from tests.support.grpc_watch import GrpcWatch
from tests.support.scenarios import converged

pytestmark = needs_emulator

NODE = "node-0"


def refused(reason: str, resource: str = "pods") -> float:
    return metrics.OBJECTS_REFUSED.labels(resource, reason)._value.get()  # type: ignore[no-any-return]


def pod_json(ns: str, name: str, uid: str = "", **meta: Any) -> dict[str, Any]:
    """A pod on NODE as the API server encodes it, with its metadata fields as given."""
    metadata = {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "1", **meta}
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {k: v for k, v in metadata.items() if v != ""},
        "spec": {"nodeName": NODE},
        "status": {"podIP": "10.9.9.9"},
    }


def inject_line(store: Store, plural: str, line: bytes) -> None:
    """Send one raw watch line to every watcher of ``plural`` (as the next resourceVersion)."""
    store.rv += 1
    event = Event(store.rv, plural, "MODIFIED", {"metadata": {}}, b"{}")
    event._line = event._partial_line = line + b"\n"
    store.history.append(event)
    for watcher in list(store.watchers[plural]):
        store._deliver(watcher, event)


def event_line(kind: str, obj: object) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


def assert_never_served(w: GrpcWatch, names: set[str]) -> None:
    served = {json.loads(e.meta).get("name") for e in w.events if e.meta}
    assert not served & names, served & names
    assert all(e.uid for e in w.events)


async def subscribed(env: Env) -> GrpcWatch:
    await env.ready()
    w = env.watch(NODE)
    await converged(env, w)
    return w


async def test_malformed_watch_events_are_refused(nursery: trio.Nursery) -> None:
    async with environment(nursery, nodes=1, pods_per_node=1) as env:
        w = await subscribed(env)
        ns = env.unique("bad")
        await env.cluster.namespace(ns)
        victim = await env.cluster.pod(ns, "victim", NODE)
        await converged(env, w)
        store = env.emulator.emulator.store
        pods = next(r for r in env.collector.reflectors if r.kind == "Pod")

        shapes = {  # reason -> the line that must be refused
            "no_uid": event_line("ADDED", pod_json(ns, "no-uid")),
            "no_name": event_line("ADDED", pod_json(ns, "", uid="u-no-name", generateName="x-")),
            "no_namespace": event_line("ADDED", pod_json("", "no-ns", uid="u-no-ns")),
            "no_resource_version": event_line(
                "ADDED", pod_json(ns, "no-rv", "u-no-rv", resourceVersion="")
            ),
            "wrong_kind": event_line(
                "ADDED", {**pod_json(ns, "a-service", uid="u-svc"), "kind": "Service"}
            ),
            "not_an_object": event_line("ADDED", ["not-an-object"]),
            "wrong_type": event_line("ADDED", {"metadata": {"name": ["wrong-type"]}}),
            "no_object": b'{"type":"DELETED"}',  # would be victim's deletion, if anything
            "bookmark_without_rv": event_line("BOOKMARK", {"kind": "Pod", "metadata": {}}),
        }
        before = {reason: refused(reason) for reason in shapes}
        rv_before = pods.rv
        restarts_before = pods.watch_restarts
        for line in shapes.values():
            inject_line(store, "pods", line)
        inject_line(store, "pods", event_line("DELETED", None))  # a null object: no_object too
        control = await env.cluster.pod(ns, "control", NODE)  # sent after them, on the same watch

        uid = control["metadata"]["uid"]
        await w.wait_for(lambda w, uid=uid: uid in w.current)
        for reason in shapes:
            expected = before[reason] + (2 if reason == "no_object" else 1)
            assert refused(reason) == expected, reason
        assert pods.watch_restarts == restarts_before  # refused one by one, the watch went on
        assert pods.rv != "" and int(pods.rv) >= int(rv_before)
        await converged(env, w)  # the table is the API server's truth, victim still in it
        assert victim["metadata"]["uid"] in w.current
        assert_never_served(w, {"no-uid", "no-ns", "no-rv", "a-service", "wrong-type"})
        assert "u-svc" not in w.current and "u-no-name" not in w.current


async def test_malformed_list_items_are_refused(nursery: trio.Nursery) -> None:
    async with environment(nursery, nodes=1, pods_per_node=1) as env:
        w = await subscribed(env)
        ns = env.unique("badlist")
        await env.cluster.namespace(ns)
        store = env.emulator.emulator.store
        items = {  # reason -> the list item that must be refused
            "no_uid": pod_json(ns, "list-no-uid"),
            "wrong_kind": {**pod_json(ns, "list-svc", uid="u-list-svc"), "kind": "Service"},
            "not_an_object": "list-not-an-object",
            "wrong_type": {"metadata": {"name": "list-wrong-type", "labels": "x"}},
        }
        before = {reason: refused(reason) for reason in items}
        for i, item in enumerate(items.values()):  # served only by lists, never watched
            store.objects["pods"][(ns, f"zz-{i}")] = Stored(
                {"metadata": {"name": f"zz-{i}", "namespace": ns}}, json.dumps(item).encode(), 1
            )
        store.load("pods", pod_json(ns, "list-control"))  # valid, also only in lists
        control_uid = store.get("pods", ns, "list-control").obj["metadata"]["uid"]
        store._sorted["pods"] = None
        relists = metrics.RELISTS.labels("pods", "expired")._value.get()
        await env.emulator.admin("/admin/compact")  # every watch ends with 410: relist

        await w.wait_for(lambda w, uid=control_uid: uid in w.current)
        assert metrics.RELISTS.labels("pods", "expired")._value.get() > relists
        for reason in items:
            assert refused(reason) > before[reason], reason
        assert_never_served(w, {"list-no-uid", "list-svc", "list-wrong-type"})
        assert "u-list-svc" not in w.current
