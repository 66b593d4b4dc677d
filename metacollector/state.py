"""ClusterState: the objects of the seven kinds and the indexes that answer "what does node N see".

Holds one copy of each object plus, per pod, its computed refs and the non-pod keys it pulls into
its node's view. Every index is keyed so that a change finds what it affects without scanning:
pods by node, namespace, owner and label pair; Services by selector item; the pods each Service
selects. Mutated only by ``metacollector.reducer`` (through the methods here for the invariants
this module owns); read by mailboxes and renderers.

Invariants owned here:
- ``key_nodes[key][node]`` counts the pods on ``node`` whose refs pull ``key`` into its view; a key
  is in ``view(node)`` while that count is positive and the object exists. Changed only through
  ``reference``/``unreference``, which report the (node, key) pairs entering or leaving a view.
- The render cache: an event body is rendered on first use by ``event_body`` and dropped only
  through ``PodEntry.invalidate`` / ``ClusterState.invalidate``. Nothing else reads or writes it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Final, TypeVar

import msgspec

from metacollector.events import Key, NodeKey
from metacollector.model import KINDS, VIEW_OWNER_KINDS, Object, Pod, Service, SharedValues
from metacollector.render import Refs, render_body, render_refs

Label = tuple[str, str]  # one (key, value) of a pod's labels or a Service's selector
# A pod's Services are a tuple while few (most pods have 0-2: smaller than a set), a set beyond
# this many, so adding or removing one never copies a pod's whole list.
_SMALL: Final = 8


class PodEntry(msgspec.Struct, gc=False):
    """What the state derived for one pod: its refs, the keys it pulls into its node's view and
    its render cache (kept here, not in ``ClusterState.bodies``: one lookup less per change).

    Not tracked by the cyclic GC (it holds no cycles): at 150,000 pods, traversing entries in
    the collector's young generations was a tenth of the reducer's time.
    """

    key: Key  # ("Pod", uid), one tuple shared by every mailbox and index that holds this pod
    pod: Pod
    node: str
    namespace: str
    owner_uid: str
    owner_refs: Refs  # every ref but "Service": Namespace and the owner chain, kinds sorted
    owner_keys: tuple[Key, ...]  # the non-pod keys ``owner_refs`` pull into the node's view
    services: tuple[Key, ...] | set[Key] = ()  # ("Service", uid) of every Service selecting it
    # Render cache (see ``invalidate``): the References message, and the whole event body.
    encoded_refs: bytes | None = None
    body: bytes | None = None

    def invalidate(self, refs: bool) -> None:
        """Drop the rendered body; with ``refs``, the encoded refs too (they changed)."""
        self.body = None
        if refs:
            self.encoded_refs = None

    def add_service(self, key: Key) -> None:
        services = self.services
        if isinstance(services, set):
            services.add(key)
        elif len(services) < _SMALL:
            self.services = (*services, key)
        else:
            self.services = {*services, key}

    def remove_service(self, key: Key) -> None:
        services = self.services
        if isinstance(services, set):
            services.discard(key)
        else:
            self.services = tuple(k for k in services if k != key)

    def refs(self) -> Refs:
        """The pod's refs (SPEC section 1): ``owner_refs`` plus its Services' UIDs, sorted."""
        services = self.services
        if len(services) > 1:
            uids = tuple(sorted([key[1] for key in services]))
        else:
            uids = tuple([key[1] for key in services])
        return tuple(sorted([*self.owner_refs, ("Service", uids)]))


class ServiceEntry(msgspec.Struct, gc=False):
    """A Service with a non-empty selector: its key and the pods it selects."""

    key: Key
    pods: set[str]


OwnerChain = tuple[Refs, tuple[Key, ...]]  # a pod's owner refs and the keys they pull in


class SharedChains:
    """One copy of each owner chain, shared by every pod that has it.

    The pods of one ReplicaSet have equal owner refs and keys; built per pod they cost ~460 B
    each (bench/memory.py: 1,648 -> 1,187 B of entries and indexes per pod, 69 MB at 150,000
    pods). Each chain counts its pods, and goes when its last pod does (a finished Job's
    chain is not kept forever).
    """

    def __init__(self) -> None:
        self._held: dict[OwnerChain, tuple[OwnerChain, int]] = {}

    def acquire(self, chain: OwnerChain) -> OwnerChain:
        """The shared copy of ``chain``, counted for one more pod."""
        shared, users = self._held.get(chain, (chain, 0))
        self._held[shared] = (shared, users + 1)
        return shared

    def release(self, chain: OwnerChain) -> None:
        """One pod fewer has ``chain``."""
        shared, users = self._held[chain]
        if users == 1:
            del self._held[chain]
        else:
            self._held[chain] = (shared, users - 1)

    def __len__(self) -> int:
        return len(self._held)


IndexKey = TypeVar("IndexKey", str, Label)  # an index is keyed by a name or a label pair


@dataclass
class ClusterState:
    objects: dict[str, dict[str, Object]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS if kind != "Pod"}
    )  # every kind but Pod, by uid; pods are held in ``pods``
    pods: dict[str, PodEntry] = field(default_factory=dict)
    pods_by_node: dict[str, set[str]] = field(default_factory=dict)
    pods_by_namespace: dict[str, set[str]] = field(default_factory=dict)
    pods_by_owner: dict[str, set[str]] = field(default_factory=dict)
    # namespace -> (label key, value) -> pods carrying it, for the keys in ``indexed_keys``: a
    # Service finds the pods it selects from its selector's rarest item, never by scanning the
    # namespace. (A pair only one pod carries maps to its uid, not to a set.)
    pods_by_label: dict[str, dict[Label, str | set[str]]] = field(default_factory=dict)
    # namespace -> the label keys a Service there selects on, or once did: only these are
    # indexed (a pod's other labels, such as a unique revision or name, cost nothing). A key
    # becomes indexed with one scan of the namespace when a Service first selects on it.
    indexed_keys: dict[str, set[str]] = field(default_factory=dict)
    # Services with a non-empty selector, by namespace then one (key, value) of their selector
    # (the smallest): a pod being added checks only the Services indexed under its own labels.
    services_by_label: dict[str, dict[Label, set[str]]] = field(default_factory=dict)
    # ... and under every item of their selector: a relabelled pod checks only the Services
    # that select on a label pair it gained or lost.
    services_by_item: dict[str, dict[Label, set[str]]] = field(default_factory=dict)
    services: dict[str, ServiceEntry] = field(default_factory=dict)  # uid -> selected pods
    namespace_uids: dict[str, str] = field(default_factory=dict)  # name -> uid
    key_nodes: dict[Key, dict[str, int]] = field(default_factory=dict)  # key -> node -> pods
    bodies: dict[Key, bytes] = field(default_factory=dict)  # render cache of non-pod objects
    chains: SharedChains = field(default_factory=SharedChains)  # every pod's owner refs and keys
    # one copy of equal encoded refs: the pods of a ReplicaSet behind the same Services have
    # the same (~220 B each: 33 MB at 150,000 pods, bench/memory.py)
    encoded_refs: SharedValues[bytes] = field(default_factory=SharedValues)
    # Items visited by the loops below (candidates checked, pods and keys moved): a count of
    # the reducer's work, for tests and bench/complexity.py (a few additions per change).
    ops: int = 0

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
            related.update(zip(entry.owner_keys, repeat(None)))
            related.update(zip(entry.services, repeat(None)))
        for key in related:
            if key[1] in self.objects[key[0]]:
                yield key

    def event_body(self, node: str, key: Key) -> bytes | None:
        """The rendered event body of ``key`` while it is in ``view(node)``; else None.

        Bodies are rendered on first use and cached until ``invalidate``.
        """
        kind, uid = key
        if kind == "Pod":
            entry = self.pods.get(uid)
            if entry is None or entry.node != node or not node:
                return None
            if entry.body is None:
                if entry.encoded_refs is None:
                    entry.encoded_refs = self.encoded_refs.get(render_refs(entry.refs()))
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

    def render_views(self) -> Iterator[None]:
        """Render every body some node's view holds and has not been rendered yet, yielding
        after each one so the caller can checkpoint (the hub may change the state meanwhile:
        keys come from a snapshot and each is looked up again). Run once after the first sync,
        it spares the first subscribers' initial sync the rendering of the whole cluster."""
        for uid in list(self.pods):
            entry = self.pods.get(uid)
            if entry is not None and entry.node and entry.body is None:
                self.event_body(entry.node, entry.key)
                yield
        for key in list(self.key_nodes):
            nodes = self.key_nodes.get(key)
            if nodes and key not in self.bodies:
                self.event_body(next(iter(nodes)), key)
                yield

    def invalidate(self, key: Key) -> None:
        """Drop the rendered body of a non-pod object (it changed or left)."""
        self.bodies.pop(key, None)

    def owner_refs(self, pod: Pod) -> OwnerChain:
        """The Namespace and owner-chain part of a pod's refs, and the keys they pull in (a new
        copy: a pod entry holds the one from ``chains``)."""
        meta = pod.metadata
        # A dict keeps one entry per kind (an owner of kind Namespace or Service gives way to the
        # pod's own, as the Go collector's map does).
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
            refs.pop("Service", None)
        return tuple(sorted(refs.items())), tuple(related)

    def matching_services(self, pod: Pod) -> list[Key]:
        """Keys of the Services in the pod's namespace that select it."""
        labels = pod.metadata.labels
        index = self.services_by_label.get(pod.metadata.namespace)
        if not labels or index is None:
            return []
        found: list[Key] = []
        services, entries = self.objects["Service"], self.services
        for label in labels.items():
            candidates = index.get(label, ())
            self.ops += len(candidates)
            for uid in candidates:
                svc = services[uid]
                assert isinstance(svc, Service)
                if selects(svc, pod):
                    found.append(entries[uid].key)
        return found

    def selected_pods(self, service: Service) -> set[str]:
        """UIDs of the pods a Service selects, found from its selector's rarest item."""
        selector = service.spec.selector
        index = self.pods_by_label.get(service.metadata.namespace)
        if not selector or index is None:
            return set()
        smallest: set[str] | None = None
        for item in selector.items():
            pods = index.get(item)
            if pods is None:
                return set()
            if isinstance(pods, str):
                pods = {pods}
            if smallest is None or len(pods) < len(smallest):
                smallest = pods
        assert smallest is not None
        self.ops += len(smallest)
        if len(selector) == 1:
            return set(smallest)
        entries = self.pods
        return {uid for uid in smallest if selects(service, entries[uid].pod)}

    # --- key_nodes (this module's invariant) -----------------------------------------------
    def reference(self, node: str, keys: Collection[Key], touched: list[NodeKey]) -> None:
        """One more pod on ``node`` references each of ``keys``; report the keys entering
        ``view(node)``. Unscheduled pods (node "") reference nothing."""
        if not node:
            return
        self.ops += len(keys)
        key_nodes = self.key_nodes
        for key in keys:
            counts = key_nodes.get(key)
            if counts is None:
                counts = key_nodes[key] = {}
            count = counts.get(node, 0)
            counts[node] = count + 1
            if not count:
                touched.append((node, key))

    def unreference(
        self,
        node: str,
        keys: Collection[Key],
        touched: list[NodeKey],
        departed: list[NodeKey] | None = None,
    ) -> None:
        """One pod fewer on ``node`` references each of ``keys``; report the keys leaving, and
        to ``departed`` those that were in ``view(node)`` (an absent object was in no view)."""
        if not node:
            return
        self.ops += len(keys)
        key_nodes, objects = self.key_nodes, self.objects
        for key in keys:
            nodes = key_nodes[key]
            count = nodes[node] - 1
            if count:
                nodes[node] = count
                continue
            del nodes[node]
            if not nodes:
                del key_nodes[key]
            touched.append((node, key))
            if departed is not None and key[1] in objects[key[0]]:
                departed.append((node, key))

    # --- label and selector indexes ---------------------------------------------------------
    def selected_labels(self, namespace: str, labels: dict[str, str] | None) -> list[Label]:
        """The pairs of ``labels`` whose key is indexed in ``namespace``: O(the fewer of the
        two)."""
        keys = self.indexed_keys.get(namespace)
        if not keys or not labels:
            return []
        if len(keys) < len(labels):
            return [(key, labels[key]) for key in keys if key in labels]
        return [item for item in labels.items() if item[0] in keys]

    def index_pod_labels(self, namespace: str, uid: str, labels: Collection[Label]) -> None:
        if labels:
            self.ops += len(labels)
            index = self.pods_by_label.setdefault(namespace, {})
            for label in labels:
                _index_pair(index, label, uid)

    def unindex_pod_labels(self, namespace: str, uid: str, labels: Collection[Label]) -> None:
        if labels:
            self.ops += len(labels)
            index = self.pods_by_label[namespace]
            for label in labels:
                members = index[label]
                if isinstance(members, str):
                    del index[label]
                else:
                    members.discard(uid)
                    if len(members) == 1:
                        index[label] = members.pop()
            if not index:
                del self.pods_by_label[namespace]

    def relabel_pod(
        self, entry: PodEntry, pod: Pod, old: dict[str, str], new: dict[str, str]
    ) -> tuple[list[Key], list[Key]]:
        """Move a pod in the label index from its ``old`` labels to its ``new`` ones; return
        the Services it loses and gains. Only indexed keys are compared: O(the fewer of the
        namespace's indexed keys and the pod's labels), nothing built when none changed."""
        keys = self.indexed_keys.get(entry.namespace)
        if not keys:
            return [], []
        removed: list[Label] = []
        added: list[Label] = []
        for key in keys if len(keys) <= len(old) + len(new) else old.keys() | new.keys():
            before, after = old.get(key), new.get(key)
            if before != after and key in keys:
                if before is not None:
                    removed.append((key, before))
                if after is not None:
                    added.append((key, after))
        if not removed and not added:
            return [], []
        self.unindex_pod_labels(entry.namespace, entry.key[1], removed)
        self.index_pod_labels(entry.namespace, entry.key[1], added)
        return self.relabelled_services(entry, pod, removed, added)

    def index_service(self, uid: str, service: Service) -> list[str]:
        """Index a Service under its selector (nothing for an empty one). Returns its selector
        keys new to the namespace: the caller indexes the namespace's pods under them
        (``index_pod_keys``, the one scan of a namespace per key: a key stays indexed) before
        it looks up the pods the Service selects."""
        items = service_labels(service)
        if not items:
            return []
        ns = service.metadata.namespace
        keys = self.indexed_keys.setdefault(ns, set())
        new_keys = [key for key, _ in items if key not in keys]
        keys.update(new_keys)
        self.services_by_label.setdefault(ns, {}).setdefault(min(items), set()).add(uid)
        by_item = self.services_by_item.setdefault(ns, {})
        for item in items:
            by_item.setdefault(item, set()).add(uid)
        return new_keys

    def index_pod_keys(self, namespace: str, keys: list[str], uid: str) -> None:
        """Index pod ``uid`` of ``namespace`` under those of label ``keys`` it carries."""
        self.ops += 1
        labels = self.pods[uid].pod.metadata.labels
        if labels:
            for key in keys:
                if key in labels:
                    index = self.pods_by_label.setdefault(namespace, {})
                    _index_pair(index, (key, labels[key]), uid)

    def unindex_service(self, uid: str, service: Service) -> None:
        items = service_labels(service)
        if not items:
            return
        ns = service.metadata.namespace
        for index, labels in (
            (self.services_by_label, (min(items),)),
            (self.services_by_item, items),
        ):
            in_namespace = index[ns]
            for label in labels:
                discard_member(in_namespace, label, uid)
            if not in_namespace:
                del index[ns]

    def relabelled_services(
        self, entry: PodEntry, pod: Pod, removed: Collection[Label], added: Collection[Label]
    ) -> tuple[list[Key], list[Key]]:
        """The Services a pod loses and gains when its labels change from ``entry.pod``'s to
        ``pod``'s (``removed``/``added``: the label pairs gone and new; a changed value is in
        both). Only Services selecting on those pairs are looked at."""
        by_item = self.services_by_item.get(entry.namespace)
        if by_item is None:
            return [], []
        current = entry.services
        objects, entries = self.objects["Service"], self.services
        lost: dict[Key, None] = {}
        if removed and current:
            # A Service keeps the pod unless it selects on a removed pair: look at whichever
            # is fewer, those Services or the pod's own.
            candidates = [uid for label in removed for uid in by_item.get(label, ())]
            if len(candidates) < len(current):
                keys = [entries[uid].key for uid in candidates]
                keys = [key for key in keys if key in current]
            else:
                keys = list(current)
            self.ops += len(candidates) + len(keys)
            for key in keys:
                svc = objects[key[1]]
                assert isinstance(svc, Service)
                if not selects(svc, pod):
                    lost[key] = None
        gained: dict[Key, None] = {}
        for label in added:
            selecting = by_item.get(label, ())
            self.ops += len(selecting)
            for uid in selecting:
                key = entries[uid].key
                if key in current or key in gained:
                    continue
                svc = objects[uid]
                assert isinstance(svc, Service)
                if selects(svc, pod):
                    gained[key] = None
        return list(lost), list(gained)

    def touch(self, key: Key, touched: list[NodeKey]) -> None:
        """Report ``key`` on every node whose view holds it (its rendering changed)."""
        for node in self.key_nodes.get(key, ()):
            touched.append((node, key))


def pod_services(keys: list[Key]) -> tuple[Key, ...] | set[Key]:
    """A pod's Services, as ``PodEntry.services`` holds them."""
    return tuple(keys) if len(keys) <= _SMALL else set(keys)


def _index_pair(index: dict[Label, str | set[str]], label: Label, uid: str) -> None:
    members = index.get(label)
    if members is None:
        index[label] = uid
    elif isinstance(members, str):
        index[label] = {members, uid}
    else:
        members.add(uid)


def discard_member(index: dict[IndexKey, set[str]], key: IndexKey, uid: str) -> None:
    """Remove ``uid`` from ``index[key]``, and the entry once it is empty."""
    members = index.get(key)
    if members is not None:
        members.discard(uid)
        if not members:
            del index[key]


def service_labels(service: Service) -> tuple[Label, ...]:
    """The items of a Service's selector; () when it selects nothing."""
    selector = service.spec.selector
    return tuple(selector.items()) if selector else ()


def selects(service: Service, pod: Pod) -> bool:
    """A Service selects a pod when its selector is non-empty and a subset of the pod's labels."""
    selector = service.spec.selector
    if not selector:
        return False
    labels = pod.metadata.labels or {}
    return all(labels.get(k) == v for k, v in selector.items())
