"""Seeded synthetic clusters with realistic objects (ownerReference chains, selectors, sizes).

Per node: one pod of the ``node-agent`` DaemonSet, the rest from Deployments (Deployment ->
ReplicaSet -> Pods, with pod-template-hash labels and a Service selecting most of them), plus a
few bare pods, bare ReplicaSets and ReplicationControllers. Pods are 2-3 KB of JSON, like real
ones with a couple of containers.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]


class Ids:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def suffix(self, n: int = 5) -> str:
        return "".join(self.rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def owner(obj: Obj) -> Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def container(name: str, image: str, i: int) -> Obj:
    return {
        "name": name,
        "image": image,
        "ports": [{"containerPort": 8080 + i, "protocol": "TCP", "name": "http"}],
        "env": [{"name": f"ENV_{k}", "value": f"value-{k}-{i}"} for k in range(6)],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        },
        "volumeMounts": [
            {
                "name": "kube-api-access",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            }
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080 + i}, "periodSeconds": 10},
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
    }


def pod(
    ids: Ids,
    namespace: str,
    name: str,
    node: str,
    labels: dict[str, str],
    owner_obj: Obj | None,
    ip: str,
    generate_name: str = "",
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": namespace,
        "uid": ids.uid(),
        "labels": labels,
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-01T00:00:00Z"},
    }
    if generate_name:
        meta["generateName"] = generate_name
    if owner_obj is not None:
        meta["ownerReferences"] = [owner(owner_obj)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [
                container("app", f"registry.example.com/{namespace}/app:1.{len(name) % 9}", 0),
                container("sidecar", "registry.example.com/proxy:2.3", 1),
            ],
            "serviceAccountName": "default",
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "volumes": [
                {
                    "name": "kube-api-access",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
                        ]
                    },
                }
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.168.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "Burstable",
            "startTime": "2026-11-22T10:00:00Z",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-22T10:00:00Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": c,
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "image": "registry.example.com/app:1",
                    "imageID": "sha256:" + "ab" * 32,
                    "containerID": "containerd://" + "cd" * 32,
                    "state": {"running": {"startedAt": "2026-11-22T10:00:01Z"}},
                }
                for c in ("app", "sidecar")
            ],
        },
    }


def workload(
    ids: Ids,
    kind: str,
    api: str,
    namespace: str,
    name: str,
    labels: dict[str, str],
    replicas: int | None,
    owner_obj: Obj | None = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": ids.uid(), "labels": labels}
    if owner_obj is not None:
        meta["ownerReferences"] = [owner(owner_obj)]
    spec: Obj = {
        "selector": {"matchLabels": labels} if kind != "ReplicationController" else labels,
        "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


def generate_cluster(
    nodes: int, pods_per_node: int, *, namespaces: int = 20, seed: int = 1, deployment_size: int = 5
) -> Iterator[tuple[str, Obj]]:
    """Yield (plural, object) for a whole cluster, owners before what they own."""
    ids = Ids(seed)
    rng = ids.rng
    node_names = [f"node-{i}" for i in range(nodes)]
    for name in node_names:
        yield (
            "nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "uid": ids.uid(),
                    "labels": {"kubernetes.io/hostname": name},
                },
            },
        )
    ns_names = ["kube-system"] + [f"team-{i}" for i in range(namespaces)]
    for name in ns_names:
        yield (
            "namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "uid": ids.uid(),
                    "labels": {"kubernetes.io/metadata.name": name},
                },
            },
        )
    if not nodes or not pods_per_node:
        return
    ds = workload(
        ids, "DaemonSet", "apps/v1", "kube-system", "node-agent", {"app": "node-agent"}, None
    )
    yield "daemonsets", ds
    ip = 0

    def next_ip() -> str:
        nonlocal ip
        ip += 1
        return f"10.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"

    for node in node_names:
        yield (
            "pods",
            pod(
                ids,
                "kube-system",
                f"node-agent-{ids.suffix()}",
                node,
                {"app": "node-agent"},
                ds,
                next_ip(),
                "node-agent-",
            ),
        )
    slots = [node for node in node_names for _ in range(pods_per_node - 1)]
    rng.shuffle(slots)
    d = 0
    while slots:
        ns = ns_names[1 + d % namespaces] if namespaces else "kube-system"
        take, slots = slots[:deployment_size], slots[deployment_size:]
        if d % 50 == 49:  # now and then a bare pod, a bare ReplicaSet or a ReplicationController
            labels = {"app": f"legacy-{d}"}
            rc = workload(ids, "ReplicationController", "v1", ns, f"legacy-{d}", labels, len(take))
            yield "replicationcontrollers", rc
            for node in take[:-1]:
                yield (
                    "pods",
                    pod(
                        ids,
                        ns,
                        f"legacy-{d}-{ids.suffix()}",
                        node,
                        labels,
                        rc,
                        next_ip(),
                        f"legacy-{d}-",
                    ),
                )
            yield (
                "pods",
                pod(
                    ids,
                    ns,
                    f"standalone-{d}",
                    take[-1],
                    {"run": f"standalone-{d}"},
                    None,
                    next_ip(),
                ),
            )
            d += 1
            continue
        name = f"app-{d}"
        labels = {"app": name, "tier": rng.choice(["web", "api", "worker"])}
        dep = workload(ids, "Deployment", "apps/v1", ns, name, labels, len(take))
        template_hash = ids.suffix(9)
        rs_labels = {**labels, "pod-template-hash": template_hash}
        rs = workload(
            ids, "ReplicaSet", "apps/v1", ns, f"{name}-{template_hash}", rs_labels, len(take), dep
        )
        yield "deployments", dep
        yield "replicasets", rs
        if d % 5 != 4:
            yield (
                "services",
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": ns, "uid": ids.uid(), "labels": labels},
                    "spec": {
                        "selector": {"app": name},
                        "ports": [{"port": 80, "targetPort": 8080}],
                        "type": "ClusterIP",
                        "clusterIP": f"172.20.{(d >> 8) & 255}.{d & 255}",
                    },
                },
            )
        for node in take:
            yield (
                "pods",
                pod(
                    ids,
                    ns,
                    f"{rs['metadata']['name']}-{ids.suffix()}",
                    node,
                    rs_labels,
                    rs,
                    next_ip(),
                    f"{rs['metadata']['name']}-",
                ),
            )
        d += 1
    for ns in ns_names[1:]:
        yield (
            "services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "external", "namespace": ns, "uid": ids.uid()},
                "spec": {"type": "ExternalName", "externalName": "db.example.com"},
            },
        )
