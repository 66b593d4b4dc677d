"""Drive a cluster only through the Kubernetes REST API (emulator or real API server).

Also computes the expected view of a node from a fresh list of every watched object, through
the naive oracle of tests/core, so end-to-end tests compare against the API server's truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from metacollector import model
from metacollector.emulator.synthetic import owner
from metacollector.proto import metadata_pb2 as pb
from tests.support import oracle

PATHS = {
    "Pod": ("/api/v1", "pods"),
    "Namespace": ("/api/v1", "namespaces"),
    "Service": ("/api/v1", "services"),
    "ReplicationController": ("/api/v1", "replicationcontrollers"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "DaemonSet": ("/apis/apps/v1", "daemonsets"),
}
API_VERSION = {k: ("v1" if base == "/api/v1" else "apps/v1") for k, (base, _) in PATHS.items()}

POD_SPEC_TEMPLATE = {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}


def path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    base, plural = PATHS[kind]
    out = base + (f"/namespaces/{namespace}" if namespace and kind != "Namespace" else "")
    out += f"/{plural}"
    return out + (f"/{name}" if name else "")


owner_ref = owner  # a controlling ownerReference to ``obj``


def workload(kind: str, name: str, labels: dict[str, str], replicas: int = 1) -> dict[str, Any]:
    template = {"metadata": {"labels": labels}, "spec": POD_SPEC_TEMPLATE}
    spec: dict[str, Any] = {"selector": {"matchLabels": labels}, "template": template}
    if kind == "ReplicationController":
        spec["selector"] = labels
    if kind != "DaemonSet":
        spec["replicas"] = replicas
    return {"spec": spec, "metadata": {"name": name, "labels": labels}}


@dataclass
class Cluster:
    client: httpx.AsyncClient

    async def create(
        self, kind: str, namespace: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        body = {"apiVersion": API_VERSION[kind], "kind": kind, **body}
        r = await self.client.post(path(kind, namespace), json=body)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.create(
            "Namespace", None, {"metadata": {"name": name, "labels": labels or {}}}
        )

    async def pod(
        self,
        namespace: str,
        name: str,
        node: str,
        labels: dict[str, str] | None = None,
        owner: dict[str, Any] | None = None,
        generate_name: str = "",
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"labels": labels or {}}
        if generate_name:
            meta["generateName"] = generate_name
        else:
            meta["name"] = name
        if owner is not None:
            meta["ownerReferences"] = [owner_ref(owner)]
        spec = {**POD_SPEC_TEMPLATE, "nodeName": node}
        return await self.create("Pod", namespace, {"metadata": meta, "spec": spec})

    async def service(
        self, namespace: str, name: str, selector: dict[str, str] | None
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"ports": [{"port": 80}]}
        if selector:
            spec["selector"] = selector
        return await self.create("Service", namespace, {"metadata": {"name": name}, "spec": spec})

    async def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        subresource: str = "",
    ) -> dict[str, Any]:
        url = path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        r = await self.client.patch(
            url, json=patch, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        r = await self.client.delete(path(kind, namespace, name))
        assert r.status_code in (200, 202), r.text

    async def objects(self) -> oracle.Objects:
        """Every watched object, freshly listed, decoded as the collector decodes them."""
        out: oracle.Objects = {}
        for kind in model.KINDS:
            r = await self.client.get(path(kind))
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            out[kind] = {
                item["metadata"]["uid"]: model.decode(kind, json.dumps(item).encode())
                for item in items
            }
        return out

    async def expected_view(self, node: str, kinds: frozenset[str]) -> dict[str, pb.Event]:
        return oracle.view(await self.objects(), node, kinds)
