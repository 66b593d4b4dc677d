"""The cluster of SPEC section 6, scenario 4, built through the REST API, and convergence checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from metacollector.subscriptions import selected_kinds
from tests.support.cluster import owner_ref, workload
from tests.support.env import Env
from tests.support.grpc_watch import GrpcWatch


@dataclass
class Scenario:
    ns: str
    system_ns: str
    nodes: tuple[str, str, str]
    objs: dict[str, dict[str, Any]]

    def uid(self, key: str) -> str:
        return str(self.objs[key]["metadata"]["uid"])


async def build(env: Env) -> Scenario:
    """Deployment (2 replicas on two nodes, 2 Services selecting them), a DaemonSet with a pod
    on every node, a bare pod, a bare ReplicaSet with a pod, a ReplicationController with a pod;
    plus a selector-less Service and one selecting nothing on these nodes."""
    c = env.cluster
    ns, system_ns = env.unique("shop"), env.unique("system")
    nodes = (env.unique("node-a"), env.unique("node-b"), env.unique("node-c"))
    o: dict[str, dict[str, Any]] = {}
    o["ns"] = await c.namespace(ns, {"team": "shop"})
    o["system_ns"] = await c.namespace(system_ns)
    web = {"app": "web"}
    o["deploy"] = await c.create("Deployment", ns, workload("Deployment", "web", web, 2))
    rs = workload("ReplicaSet", "web-7d9f", {**web, "pod-template-hash": "7d9f"}, 2)
    rs["metadata"]["ownerReferences"] = [owner_ref(o["deploy"])]
    o["rs"] = await c.create("ReplicaSet", ns, rs)
    o["svc_web"] = await c.service(ns, "web", web)
    o["svc_front"] = await c.service(ns, "front", {"tier": "front"})
    o["svc_none"] = await c.service(ns, "headless", None)
    o["svc_db"] = await c.service(ns, "db", {"app": "db"})
    o["ds"] = await c.create(
        "DaemonSet", system_ns, workload("DaemonSet", "agent", {"app": "agent"})
    )
    o["bare_rs"] = await c.create("ReplicaSet", ns, workload("ReplicaSet", "bare", {"app": "b"}))
    o["rc"] = await c.create(
        "ReplicationController", ns, workload("ReplicationController", "legacy", {"app": "legacy"})
    )
    for i, node in enumerate(nodes[:2]):
        o[f"web{i}"] = await c.pod(
            ns,
            "",
            node,
            {**web, "tier": "front", "pod-template-hash": "7d9f"},
            o["rs"],
            generate_name="web-7d9f-",
        )
    for i, node in enumerate(nodes):
        o[f"agent{i}"] = await c.pod(system_ns, f"agent-{i}", node, {"app": "agent"}, o["ds"])
    o["bare"] = await c.pod(ns, "bare", nodes[0])
    o["bare_rs_pod"] = await c.pod(ns, "bare-rs-pod", nodes[0], {"app": "b"}, o["bare_rs"])
    o["rc_pod"] = await c.pod(ns, "legacy-1", nodes[0], {"app": "legacy"}, o["rc"])
    return Scenario(ns, system_ns, nodes, o)


async def converged(env: Env, watch: GrpcWatch, timeout: float = 10) -> None:
    """Wait until the subscriber's table equals view(node) from a fresh list, byte for byte."""
    expected = await env.cluster.expected_view(watch.node, selected_kinds(watch.kinds))
    try:
        await watch.wait_for(lambda w: w.current == expected, timeout)
    except trio.TooSlowError:
        got, want = set(watch.current), set(expected)
        differ = [u for u in got & want if watch.current[u] != expected[u]]
        raise AssertionError(
            f"node {watch.node}: missing {want - got}, extra {got - want}, differ {differ}"
        ) from None
