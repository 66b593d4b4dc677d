"""Server-side Table responses (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``), what
``kubectl get`` asks for: the columns the real API server's printers give each kind, priority 1
for the ones kubectl shows only with ``-o wide``, and each row's object as ``includeObject``
asks (PartialObjectMetadata by default: kubectl reads the namespace and labels from it).

Cells are computed as the real printers compute them (pod STATUS from container states, READY
as ready/total, AGE as kubectl's human duration), for what the emulator's objects carry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from metacollector.emulator.store import Obj, partial

_encode = msgspec.json.Encoder().encode
NONE = "<none>"
Cell = str | int


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    cell: Callable[[Obj], Cell]
    priority: int = 0  # 1: shown by kubectl only with -o wide
    type: str = "string"
    format: str = ""
    description: str = ""

    def definition(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


def table(plural: str, objects: Iterable[Obj], list_meta: Obj, include_object: str) -> Obj:
    """A ``meta.k8s.io/v1`` Table of ``objects``; ``include_object`` is the request's
    ``includeObject`` (None, Object, or Metadata, the default)."""
    columns = COLUMNS.get(plural, DEFAULT)
    rows = []
    for obj in objects:
        row: Obj = {"cells": [c.cell(obj) for c in columns]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial(obj)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": [c.definition() for c in columns],
        "rows": rows,
    }


def encode_table(plural: str, objects: Iterable[Obj], list_meta: Obj, include: str) -> bytes:
    return _encode(table(plural, objects, list_meta, include))


# --- cells -----------------------------------------------------------------------------------
def _get(obj: Obj, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)  # type: ignore[assignment]
    return obj


def _name(obj: Obj) -> Cell:
    return str(obj["metadata"].get("name", ""))


def human_duration(seconds: float) -> str:
    """kubectl's (apimachinery's) HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d" if hours % 24 == 0 else f"{days}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y" if days % 365 == 0 else f"{years}y{days % 365}d"
    return f"{years}y"


def _since(timestamp: object) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((datetime.now(UTC) - then).total_seconds())


def _age(obj: Obj) -> Cell:
    return _since(obj["metadata"].get("creationTimestamp"))


def _int(*path: str) -> Callable[[Obj], Cell]:
    return lambda obj: int(_get(obj, *path) or 0)


def _text(*path: str) -> Callable[[Obj], Cell]:
    return lambda obj: str(_get(obj, *path) or NONE)


def _raw(*path: str) -> Callable[[Obj], Cell]:
    return lambda obj: str(_get(obj, *path) or "")


def _unknown(*path: str) -> Callable[[Obj], Cell]:
    return lambda obj: str(_get(obj, *path) or "<unknown>")


def _pairs(labels: object) -> str:
    if not isinstance(labels, dict) or not labels:
        return NONE
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _label_selector(selector: object) -> str:
    if not isinstance(selector, dict):
        return NONE
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(sorted(values))})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(sorted(values))})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts) or NONE


def _template_containers(field: str) -> Callable[[Obj], Cell]:
    def cell(obj: Obj) -> Cell:
        containers = _get(obj, "spec", "template", "spec", "containers") or []
        return ",".join(str(c.get(field, "")) for c in containers) or NONE

    return cell


# --- pods (printPod) ---------------------------------------------------------------------------
def _pod_state(pod: Obj) -> tuple[str, int, int, str]:
    """(STATUS, ready containers, restarts, time since the last restart or "")."""
    status = pod.get("status") or {}
    reason = str(status.get("reason") or status.get("phase") or "")
    restarts, ready, last_restart = 0, 0, ""
    for init in status.get("initContainerStatuses") or []:
        restarts += int(init.get("restartCount") or 0)
    running = False
    for cs in reversed(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        finished = _get(cs, "lastState", "terminated", "finishedAt")
        if finished and (not last_restart or finished > last_restart):
            last_restart = finished
        state = cs.get("state") or {}
        if _get(state, "waiting", "reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            term = state["terminated"]
            reason = term.get("reason") or (
                f"Signal:{term['signal']}"
                if term.get("signal")
                else f"ExitCode:{term.get('exitCode', 0)}"
            )
        elif cs.get("ready") and "running" in state:
            running = True
            ready += 1
    if reason == "Completed" and running:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        reason = "Running" if conditions.get("Ready") == "True" else "NotReady"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return reason, ready, restarts, last_restart


def _pod_ready(pod: Obj) -> Cell:
    return f"{_pod_state(pod)[1]}/{len(_get(pod, 'spec', 'containers') or [])}"


def _pod_restarts(pod: Obj) -> Cell:
    _, _, restarts, last = _pod_state(pod)
    return f"{restarts} ({_since(last)} ago)" if last else str(restarts)


def _readiness_gates(pod: Obj) -> Cell:
    gates = _get(pod, "spec", "readinessGates") or []
    if not gates:
        return NONE
    true = {
        c.get("type") for c in _get(pod, "status", "conditions") or [] if c.get("status") == "True"
    }
    return f"{sum(g.get('conditionType') in true for g in gates)}/{len(gates)}"


# --- services (printService) -----------------------------------------------------------------
def _external_ip(svc: Obj) -> Cell:
    spec = svc.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    external = list(spec.get("externalIPs") or [])
    if kind == "ExternalName":
        return str(spec.get("externalName") or NONE)
    if kind == "LoadBalancer":
        ingress = _get(svc, "status", "loadBalancer", "ingress") or []
        external += [i.get("ip") or i.get("hostname") for i in ingress]
        return ",".join(external) if external else "<pending>"
    return ",".join(external) or NONE


def _ports(svc: Obj) -> Cell:
    out = []
    for p in _get(svc, "spec", "ports") or []:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p.get('port')}{node}/{p.get('protocol') or 'TCP'}")
    return ",".join(out) or NONE


# --- nodes (printNode) -------------------------------------------------------------------------
def _node_status(node: Obj) -> Cell:
    ready = next(
        (c for c in _get(node, "status", "conditions") or [] if c.get("type") == "Ready"), None
    )
    status = (
        "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    )
    return status + (",SchedulingDisabled" if _get(node, "spec", "unschedulable") else "")


def _node_roles(node: Obj) -> Cell:
    labels = node["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    return ",".join(r for r in roles if r) or NONE


def _node_address(kind: str) -> Callable[[Obj], Cell]:
    def cell(node: Obj) -> Cell:
        for address in _get(node, "status", "addresses") or []:
            if address.get("type") == kind:
                return str(address.get("address"))
        return NONE

    return cell


# --- role bindings -----------------------------------------------------------------------------
def _subjects(kind: str) -> Callable[[Obj], Cell]:
    def cell(binding: Obj) -> Cell:
        names = []
        for s in binding.get("subjects") or []:
            if s.get("kind") == kind:
                ns = s.get("namespace")
                names.append(f"{ns}/{s['name']}" if kind == "ServiceAccount" and ns else s["name"])
        return ", ".join(names)

    return cell


def _role_ref(binding: Obj) -> Cell:
    return f"{_get(binding, 'roleRef', 'kind')}/{_get(binding, 'roleRef', 'name')}"


NAME = Column("Name", _name, format="name", description="Name must be unique within a namespace.")
AGE = Column(
    "Age",
    _age,
    description="CreationTimestamp is a timestamp representing the server time when this object was created.",
)
CREATED_AT = Column(
    "Created At", lambda o: str(o["metadata"].get("creationTimestamp", "")), type="date"
)
WORKLOAD_WIDE = (
    Column("Containers", _template_containers("name"), priority=1),
    Column("Images", _template_containers("image"), priority=1),
    Column("Selector", lambda o: _label_selector(_get(o, "spec", "selector")), priority=1),
)
REPLICAS = (  # ReplicaSets and ReplicationControllers
    NAME,
    Column("Desired", _int("spec", "replicas"), type="integer"),
    Column("Current", _int("status", "replicas"), type="integer"),
    Column("Ready", _int("status", "readyReplicas"), type="integer"),
    AGE,
)
BINDING = (
    NAME,
    Column("Role", _role_ref),
    AGE,
    Column("Users", _subjects("User"), priority=1),
    Column("Groups", _subjects("Group"), priority=1),
    Column("ServiceAccounts", _subjects("ServiceAccount"), priority=1),
)
DEFAULT = (NAME, CREATED_AT)
COLUMNS: dict[str, tuple[Column, ...]] = {
    "pods": (
        NAME,
        Column(
            "Ready",
            _pod_ready,
            description="The aggregate readiness state of this pod for accepting traffic.",
        ),
        Column(
            "Status",
            lambda p: _pod_state(p)[0],
            description="The aggregate status of the containers in this pod.",
        ),
        Column(
            "Restarts",
            _pod_restarts,
            description="The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        ),
        AGE,
        Column(
            "IP",
            _text("status", "podIP"),
            priority=1,
            description="IP address allocated to the pod.",
        ),
        Column(
            "Node",
            _text("spec", "nodeName"),
            priority=1,
            description="Name of the node the pod is scheduled on.",
        ),
        Column(
            "Nominated Node",
            _text("status", "nominatedNodeName"),
            priority=1,
            description="Name of the node the pod is nominated to run on.",
        ),
        Column("Readiness Gates", _readiness_gates, priority=1, description="Pod readiness gates."),
    ),
    "namespaces": (NAME, Column("Status", _raw("status", "phase")), AGE),
    "services": (
        NAME,
        Column("Type", lambda s: str(_get(s, "spec", "type") or "ClusterIP")),
        Column("Cluster-IP", _text("spec", "clusterIP")),
        Column("External-IP", _external_ip),
        Column("Port(s)", _ports),
        AGE,
        Column("Selector", lambda s: _pairs(_get(s, "spec", "selector")), priority=1),
    ),
    "deployments": (
        NAME,
        Column(
            "Ready",
            lambda d: (
                f"{_get(d, 'status', 'readyReplicas') or 0}/{_get(d, 'spec', 'replicas') or 0}"
            ),
        ),
        Column("Up-to-date", _int("status", "updatedReplicas"), type="integer"),
        Column("Available", _int("status", "availableReplicas"), type="integer"),
        AGE,
        *WORKLOAD_WIDE,
    ),
    "replicasets": (*REPLICAS, *WORKLOAD_WIDE),
    # a ReplicationController's selector is a plain map
    "replicationcontrollers": (
        *REPLICAS,
        *WORKLOAD_WIDE[:2],
        Column("Selector", lambda o: _pairs(_get(o, "spec", "selector")), priority=1),
    ),
    "daemonsets": (
        NAME,
        Column("Desired", _int("status", "desiredNumberScheduled"), type="integer"),
        Column("Current", _int("status", "currentNumberScheduled"), type="integer"),
        Column("Ready", _int("status", "numberReady"), type="integer"),
        Column("Up-to-date", _int("status", "updatedNumberScheduled"), type="integer"),
        Column("Available", _int("status", "numberAvailable"), type="integer"),
        Column(
            "Node Selector", lambda d: _pairs(_get(d, "spec", "template", "spec", "nodeSelector"))
        ),
        AGE,
        *WORKLOAD_WIDE,
    ),
    "nodes": (
        NAME,
        Column("Status", _node_status),
        Column("Roles", _node_roles),
        AGE,
        Column("Version", _raw("status", "nodeInfo", "kubeletVersion")),
        Column("Internal-IP", _node_address("InternalIP"), priority=1),
        Column("External-IP", _node_address("ExternalIP"), priority=1),
        Column("OS-Image", _unknown("status", "nodeInfo", "osImage"), priority=1),
        Column("Kernel-Version", _unknown("status", "nodeInfo", "kernelVersion"), priority=1),
        Column(
            "Container-Runtime",
            _unknown("status", "nodeInfo", "containerRuntimeVersion"),
            priority=1,
        ),
    ),
    "serviceaccounts": (
        NAME,
        Column("Secrets", lambda o: len(o.get("secrets") or []), type="integer"),
        AGE,
    ),
    "configmaps": (
        NAME,
        Column(
            "Data",
            lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            type="integer",
        ),
        AGE,
    ),
    "clusterroles": (NAME, CREATED_AT),
    "roles": (NAME, CREATED_AT),
    "clusterrolebindings": BINDING,
    "rolebindings": BINDING,
    "leases": (NAME, Column("Holder", lambda o: str(_get(o, "spec", "holderIdentity") or "")), AGE),
    "networkpolicies": (
        NAME,
        Column("Pod-Selector", lambda o: _label_selector(_get(o, "spec", "podSelector"))),
        AGE,
    ),
    "poddisruptionbudgets": (
        NAME,
        Column("Min Available", _text("spec", "minAvailable")),
        Column("Max Unavailable", _text("spec", "maxUnavailable")),
        Column("Allowed Disruptions", _int("status", "disruptionsAllowed"), type="integer"),
        AGE,
    ),
}
