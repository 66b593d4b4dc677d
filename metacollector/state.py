"""ClusterState: the objects of the seven kinds and the indexes that answer "what does node N see".

Holds one copy of each object plus, per pod, its computed refs and the non-pod keys it pulls into
its node's view. ``key_nodes`` counts, per node, how many of its pods reference each non-pod key:
a key is in ``view(N)`` while that count is positive and the object exists.
Mutated only by ``metacollector.reducer``; read by mailboxes and renderers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from metacollector.model import KINDS, VIEW_OWNER_KINDS, Object, Pod, Service
from metacollector.render import Refs, render_body

Key = tuple[str, str]  # (kind, uid)


class PodEntry(msgspec.Struct, gc=False):
    """What the state derived for one pod: its refs, the keys it pulls into its node's view and
    its rendered event (kept here, not in ``bodies``: one lookup less per pod change).

    Not tracked by the cyclic GC (it holds no cycles): at 150,000 pods, traversing entries in
    the collector's young generations was a tenth of the reducer's time.
    """

    key: Key  # ("Pod", uid), one tuple shared by every mailbox and index that holds this pod
    pod: Pod
    node: str
    namespace: str
    owner_uid: str
    refs: Refs
    related: tuple[Key, ...]
    services: tuple[str, ...]  # UIDs of the Services selecting the pod (part of ``refs``)
    encoded_refs: bytes  # ``refs`` as the serialized References message
    body: bytes | None = None  # rendered event body, until the pod's rendering changes


@dataclass
class ClusterState:
    objects: dict[str, dict[str, Object]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS if kind != "Pod"}
    )  # every kind but Pod, by uid; pods are held in ``pods``
    pods: dict[str, PodEntry] = field(default_factory=dict)
    pods_by_node: dict[str, set[str]] = field(default_factory=dict)
    pods_by_namespace: dict[str, set[str]] = field(default_factory=dict)
    pods_by_owner: dict[str, set[str]] = field(default_factory=dict)
    # Services with a non-empty selector, by namespace then one (key, value) of their selector:
    # a pod only needs to check the services indexed under its own labels.
    services_by_label: dict[str, dict[tuple[str, str], set[str]]] = field(default_factory=dict)
    namespace_uids: dict[str, str] = field(default_factory=dict)  # name -> uid
    key_nodes: dict[Key, dict[str, int]] = field(default_factory=dict)  # key -> node -> pod count
    bodies: dict[Key, bytes] = field(default_factory=dict)  # rendered-event cache (not pods)

    # --- queries ---------------------------------------------------------------------------
    def get(self, key: Key) -> Object | None:
        kind, uid = key
        if kind == "Pod":
            entry = self.pods.get(uid)
            return entry.pod if entry is not None else None
        return self.objects[kind].get(uid)

    def by_kind(self) -> dict[str, dict[str, Object]]:
        """Every object held, by kind then uid (a copy, for checks and tests)."""
        pods: dict[str, Object] = {uid: entry.pod for uid, entry in self.pods.items()}
        return {"Pod": pods, **{kind: dict(held) for kind, held in self.objects.items()}}

    def view(self, node: str) -> Iterator[Key]:
        """Every key of ``view(node)`` (SPEC section 2)."""
        pods = self.pods
        related: dict[Key, None] = {}  # the non-pod keys its pods reference, once each
        for uid in self.pods_by_node.get(node, ()):
            entry = pods[uid]
            yield entry.key
            related.update(dict.fromkeys(entry.related))
        for key in related:
            if key[1] in self.objects[key[0]]:
                yield key

    def current(self, node: str, key: Key) -> bytes | None:
        """The rendered event body of ``key`` while it is in ``view(node)``; else None.

        Bodies are rendered on first use and cached until the object's rendering changes.
        """
        kind, uid = key
        if kind == "Pod":
            entry = self.pods.get(uid)
            if entry is None or entry.node != node or not node:
                return None
            if entry.body is None:
                entry.body = render_body(kind, entry.pod, entry.encoded_refs)
            return entry.body
        nodes = self.key_nodes.get(key)
        if nodes is None or node not in nodes:
            return None
        obj = self.objects[kind].get(uid)
        if obj is None:
            return None
        body = self.bodies.get(key)
        if body is None:
            body = self.bodies[key] = render_body(kind, obj, None)
        return body

    def pod_refs(
        self, pod: Pod, services: tuple[str, ...], same_owners: PodEntry | None = None
    ) -> tuple[Refs, tuple[Key, ...]]:
        """A pod's refs (SPEC section 1) and the non-pod keys they pull into its node's view.

        ``services``: ``matching_services(pod)``. ``same_owners``: the pod's entry when its
        namespace and ownerReferences did not change; all but its Services are taken from there
        (kept current by the reducer).
        """
        if same_owners is not None:
            refs = {kind: uids for kind, uids in same_owners.refs if kind != "Service"}
            related = [key for key in same_owners.related if key[0] != "Service"]
        else:
            refs, related = self._owner_refs(pod)
        refs["Service"] = services
        related.extend(("Service", uid) for uid in services)
        return tuple(sorted(refs.items())), tuple(related)

    def _owner_refs(self, pod: Pod) -> tuple[dict[str, tuple[str, ...]], list[Key]]:
        """The Namespace and owner-chain part of a pod's refs and related keys."""
        meta = pod.metadata
        refs: dict[str, tuple[str, ...]] = {}
        related: list[Key] = []
        ns_uid = self.namespace_uids.get(meta.namespace)
        refs["Namespace"] = (ns_uid,) if ns_uid else ()
        if ns_uid:
            related.append(("Namespace", ns_uid))
        owner = meta.controller()
        if owner is not None and owner.kind and owner.uid:
            refs[owner.kind] = (owner.uid,)
            if owner.kind in VIEW_OWNER_KINDS:
                related.append((owner.kind, owner.uid))
            if owner.kind == "ReplicaSet":
                rs = self.objects["ReplicaSet"].get(owner.uid)
                grand = rs.metadata.controller() if rs is not None else None
                if grand is not None and grand.kind and grand.uid:
                    refs[grand.kind] = (grand.uid,)
                    if grand.kind == "Deployment":
                        related.append(("Deployment", grand.uid))
        return refs, related

    def matching_services(self, pod: Pod) -> tuple[str, ...]:
        """UIDs of the Services in the pod's namespace that select it, sorted."""
        labels = pod.metadata.labels
        index = self.services_by_label.get(pod.metadata.namespace)
        if not labels or index is None:
            return ()
        found: set[str] = set()
        services = self.objects["Service"]
        for label in labels.items():
            for uid in index.get(label, ()):
                svc = services[uid]
                assert isinstance(svc, Service)
                if uid not in found and selects(svc, pod):
                    found.add(uid)
        return tuple(sorted(found))


def index_label(service: Service) -> tuple[str, str] | None:
    """The (key, value) a Service is indexed under in its namespace; None when it selects
    nothing."""
    selector = service.spec.selector
    if not selector:
        return None
    return min(selector.items())


def selects(service: Service, pod: Pod) -> bool:
    """A Service selects a pod when its selector is non-empty and a subset of the pod's labels."""
    selector = service.spec.selector
    if not selector:
        return False
    labels = pod.metadata.labels or {}
    return all(labels.get(k) == v for k, v in selector.items())
