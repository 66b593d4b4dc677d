"""Kubernetes JSON builders for core tests: objects go through the real decoder."""

from __future__ import annotations

import json
from typing import Any

from metacollector import model


def owner(kind: str, uid: str, controller: bool = True) -> dict[str, Any]:
    api = "v1" if kind == "ReplicationController" else "apps/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "name": f"{kind.lower()}-{uid}",
        "uid": uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def meta(
    name: str,
    uid: str,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    generate_name: str = "",
    rv: str = "1",
) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": name,
        "uid": uid,
        "resourceVersion": rv,
        "creationTimestamp": "2026-11-22T10:00:00Z",
        "annotations": {"note": "not sent"},
    }
    if namespace is not None:
        m["namespace"] = namespace
    if labels:
        m["labels"] = labels
    if owners:
        m["ownerReferences"] = owners
    if generate_name:
        m["generateName"] = generate_name
    return m


def pod(
    name: str,
    uid: str,
    namespace: str = "shop",
    node: str = "n1",
    labels: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    ip: str = "",
    generate_name: str = "",
    rv: str = "1",
    phase: str = "Running",
) -> model.Object:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta(name, uid, namespace, labels, owners, generate_name, rv),
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": phase, "hostIP": "192.168.0.1", **({"podIP": ip} if ip else {})},
    }
    return model.decode("Pod", json.dumps(doc).encode())


def service(
    name: str,
    uid: str,
    namespace: str = "shop",
    selector: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    rv: str = "1",
) -> model.Object:
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, uid, namespace, labels, rv=rv),
        "spec": {"ports": [{"port": 80}], **({"selector": selector} if selector else {})},
    }
    return model.decode("Service", json.dumps(doc).encode())


def metadata_only(
    kind: str,
    name: str,
    uid: str,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    rv: str = "1",
) -> model.Object:
    """A PartialObjectMetadata, as the collector watches namespaces and workloads."""
    doc = {
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": meta(name, uid, namespace, labels, owners, rv=rv),
    }
    return model.decode(kind, json.dumps(doc).encode())


def namespace(name: str, uid: str, labels: dict[str, str] | None = None) -> model.Object:
    return metadata_only("Namespace", name, uid, labels=labels)
