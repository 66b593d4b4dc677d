"""An independent, naive statement of SPEC section 2: view(N) rendered from the objects alone.

Deliberately shares no code with metacollector.state/render: it scans every object on each call
and renders JSON with the standard library.
"""

from __future__ import annotations

import json
from typing import Any

from metacollector.model import Object, Pod, Service
from metacollector.proto import metadata_pb2 as pb

Objects = dict[str, dict[str, Object]]


def meta_json(kind: str, obj: Object) -> str:
    m = obj.metadata
    doc: dict[str, Any] = {"name": m.name, "uid": m.uid}
    if m.generateName:
        doc["generateName"] = m.generateName
    if m.labels:
        doc["labels"] = m.labels
    if kind != "Namespace":
        doc["namespace"] = m.namespace
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def controller(obj: Object) -> tuple[str, str] | None:
    for ref in obj.metadata.ownerReferences:
        if ref.controller:
            return ref.kind, ref.uid
    return None


def pod_refs(objects: Objects, pod: Pod) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    refs: dict[str, list[str]] = {}
    related: list[tuple[str, str]] = []
    ns = [
        uid for uid, o in objects["Namespace"].items() if o.metadata.name == pod.metadata.namespace
    ]
    refs["Namespace"] = ns[:1]
    related += [("Namespace", uid) for uid in ns[:1]]
    owner = controller(pod)
    if owner:
        refs[owner[0]] = [owner[1]]
        if owner[0] in ("ReplicaSet", "DaemonSet", "ReplicationController"):
            related.append(owner)
        rs = objects["ReplicaSet"].get(owner[1]) if owner[0] == "ReplicaSet" else None
        grand = controller(rs) if rs is not None else None
        if grand:
            refs[grand[0]] = [grand[1]]
            if grand[0] == "Deployment":
                related.append(grand)
    services = []
    for uid, svc in objects["Service"].items():
        assert isinstance(svc, Service)
        sel = svc.spec.selector
        labels = pod.metadata.labels or {}
        if (
            svc.metadata.namespace == pod.metadata.namespace
            and sel
            and all(labels.get(k) == v for k, v in sel.items())
        ):
            services.append(uid)
    refs["Service"] = sorted(services)
    related += [("Service", uid) for uid in services]
    return refs, related


def event(objects: Objects, kind: str, obj: Object) -> pb.Event:
    ev = pb.Event(reason="Create", uid=obj.metadata.uid, kind=kind, meta=meta_json(kind, obj))
    if isinstance(obj, Pod):
        ev.status = json.dumps(
            {"podIP": obj.status.podIP} if obj.status.podIP else {}, separators=(",", ":")
        )
        refs, _ = pod_refs(objects, obj)
        ev.refs.SetInParent()
        for k, uids in refs.items():
            ev.refs.resources[k].list.extend(uids)
    return ev


def view(objects: Objects, node: str, kinds: frozenset[str]) -> dict[str, pb.Event]:
    out: dict[str, pb.Event] = {}
    for pod in objects["Pod"].values():
        assert isinstance(pod, Pod)
        if not node or pod.spec.nodeName != node:
            continue
        if "Pod" in kinds:
            out[pod.metadata.uid] = event(objects, "Pod", pod)
        for kind, uid in pod_refs(objects, pod)[1]:
            obj = objects[kind].get(uid)
            if obj is not None and kind in kinds:
                out[uid] = event(objects, kind, obj)
    return out
