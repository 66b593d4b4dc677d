"""The reducer: apply one cluster change to ClusterState, say which node views it touched.

Pure and deterministic. ``apply`` returns every (node, key) whose presence in ``view(node)`` or
whose rendered event may have changed; mailboxes re-evaluate those keys against the state when
they send (level-triggered), so over-reporting costs a comparison, never a wrong event.
Owners are resolved through ownerReferences (not name prefixes), and a referenced object leaves
a node's view when its last referencing pod there goes (SPEC section 2's deliberate fixes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from metacollector.changes import ObjectChange, Reason
from metacollector.model import Object, Pod, Service, same_content
from metacollector.render import render_meta, render_refs, render_status
from metacollector.state import ClusterState, Key, PodEntry, index_label

ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]
Touched = list[tuple[str, Key]]


@dataclass
class Reducer:
    state: ClusterState = field(default_factory=ClusterState)
    track_changes: bool = False  # collect cluster-wide ObjectChanges (for the CloudEvents sink)
    changes: list[ObjectChange] = field(default_factory=list)
    # Collect each (node, key) at the moment it leaves view(node) (for the departure log);
    # exact, unlike ``touched``, and appended only where a view shrinks.
    track_departures: bool = False
    departed: list[tuple[str, Key]] = field(default_factory=list)
    now: float = 0.0  # caller's clock, stamped on ObjectChanges
    cause_version: str = ""  # the applied delta's resourceVersion, stamped on ObjectChanges
    initial: bool = False  # whether the applied delta comes from a reflector's first list

    def apply(self, change_type: ChangeType, kind: str, obj: Object) -> Touched:
        """Apply one change; return the (node, key) pairs it touched."""
        if kind == "Pod":
            # Pods live in ``state.pods`` only: one lookup per change (the state is far larger
            # than the CPU caches, so each lookup of a cold object costs more than the Python).
            pod_uid = obj.metadata.uid
            entry = self.state.pods.get(pod_uid)
            if change_type == "DELETED":
                return self._delete_pod(pod_uid, entry) if entry is not None else []
            assert isinstance(obj, Pod)
            if entry is None:
                return self._add_pod(pod_uid, obj)
            return self._update_pod(pod_uid, entry, obj)
        uid = obj.metadata.uid
        objects = self.state.objects[kind]
        old = objects.get(uid)
        if change_type == "DELETED":
            if old is None:
                return []
            new: Object | None = None
        else:
            new = obj
            if old is not None and same_content(old, new):
                objects[uid] = new  # keep the newest resourceVersion
                return []
        touched: Touched = []
        self._set(kind, uid, new)
        self._touch_key((kind, uid), touched)
        if new is None:
            self._depart_everywhere((kind, uid))
        self._record(kind, old, new)
        if kind == "Namespace":
            name = (new or old).metadata.name  # type: ignore[union-attr]
            old_uid = self.state.namespace_uids.get(name)
            if new is None:
                if old_uid == uid:
                    del self.state.namespace_uids[name]
            else:
                self.state.namespace_uids[name] = uid
            if self.state.namespace_uids.get(name) != old_uid:
                self._refresh_pods(self.state.pods_by_namespace.get(name, ()), touched)
        elif kind == "ReplicaSet":
            old_owner = old.metadata.controller() if old else None
            new_owner = new.metadata.controller() if new else None
            if old is None or new is None or old_owner != new_owner:
                self._refresh_pods(self.state.pods_by_owner.get(uid, ()), touched)
        elif kind == "Service":
            self._index_service(uid, old, new)
            old_sel = old.spec.selector if isinstance(old, Service) else None
            new_sel = new.spec.selector if isinstance(new, Service) else None
            if old is None or new is None or old_sel != new_sel:
                namespace = (new or old).metadata.namespace  # type: ignore[union-attr]
                self._refresh_pods(self.state.pods_by_namespace.get(namespace, ()), touched)
        return touched

    # --- pods ------------------------------------------------------------------------------
    def _add_pod(self, uid: str, pod: Pod) -> Touched:
        st = self.state
        meta, node = pod.metadata, pod.spec.nodeName
        services = st.matching_services(pod)
        refs, related = st.pod_refs(pod, services)
        owner = meta.controller()
        owner_uid = owner.uid if owner is not None else ""
        key: Key = ("Pod", uid)
        st.pods[uid] = PodEntry(
            key, pod, node, meta.namespace, owner_uid, refs, related, services, render_refs(refs)
        )
        _add(st.pods_by_node, node, uid)
        _add(st.pods_by_namespace, meta.namespace, uid)
        _add(st.pods_by_owner, owner_uid, uid)
        touched: Touched = []
        self._move_refs("", (), node, related, touched)
        if node:
            touched.append((node, key))
        self._record("Pod", None, pod)
        return touched

    def _update_pod(self, uid: str, entry: PodEntry, new: Pod) -> Touched:
        """Each field is compared once; what a change cannot alter is reused from ``entry``."""
        st = self.state
        old = entry.pod
        a, b = old.metadata, new.metadata
        node, old_node = new.spec.nodeName, entry.node
        # The namespace/owner part of the refs is the entry's (kept current by the reducer)
        # unless the pod's namespace or ownerReferences changed.
        same_owners = a.ownerReferences == b.ownerReferences and a.namespace == b.namespace
        same_labels = a.labels == b.labels
        # What the rendered event depends on besides labels and refs (it has no node in it).
        same_rest = (
            old.status == new.status and a.name == b.name and a.generateName == b.generateName
        )
        if same_owners and same_labels and same_rest and node == old_node:
            entry.pod = new  # nothing we use changed; keep the newest resourceVersion
            return []
        # Services change only through Service changes (which refresh the pods they select),
        # so while the labels stand, so do the selecting Services.
        services = entry.services if same_owners and same_labels else st.matching_services(new)
        if same_owners and services == entry.services:
            # Refs depend on the owners and the selecting Services only (and on other objects,
            # whose changes refresh them): a move, an IP change or most relabels keep them.
            refs, related, owner_uid = entry.refs, entry.related, entry.owner_uid
            encoded_refs = entry.encoded_refs
            body = entry.body if same_labels and same_rest else None
        else:
            refs, related = st.pod_refs(new, services, entry if same_owners else None)
            owner = b.controller()
            owner_uid = owner.uid if owner is not None else ""
            encoded_refs = entry.encoded_refs if entry.refs == refs else render_refs(refs)
            body = None
        key = entry.key
        st.pods[uid] = PodEntry(
            key, new, node, b.namespace, owner_uid, refs, related, services, encoded_refs, body
        )
        if old_node != node:
            _discard(st.pods_by_node, old_node, uid)
            _add(st.pods_by_node, node, uid)
        if entry.namespace != b.namespace:
            _discard(st.pods_by_namespace, entry.namespace, uid)
            _add(st.pods_by_namespace, b.namespace, uid)
        if entry.owner_uid != owner_uid:
            _discard(st.pods_by_owner, entry.owner_uid, uid)
            _add(st.pods_by_owner, owner_uid, uid)
        touched: Touched = []
        if old_node != node or entry.related != related:
            self._move_refs(old_node, entry.related, node, related, touched)
        if old_node:
            touched.append((old_node, key))
            if node != old_node:
                self._depart(old_node, key)
        if node and node != old_node:
            touched.append((node, key))
        self._record("Pod", old, new)
        return touched

    def _delete_pod(self, uid: str, entry: PodEntry) -> Touched:
        st = self.state
        del st.pods[uid]
        _discard(st.pods_by_node, entry.node, uid)
        _discard(st.pods_by_namespace, entry.namespace, uid)
        _discard(st.pods_by_owner, entry.owner_uid, uid)
        touched: Touched = []
        if entry.node:
            self._move_refs(entry.node, entry.related, "", (), touched)
            touched.append((entry.node, entry.key))
            self._depart(entry.node, entry.key)
        self._record("Pod", entry.pod, None)
        return touched

    def _refresh_pods(self, uids: set[str] | tuple[()], touched: Touched) -> None:
        """Recompute the refs of pods whose referenced objects changed."""
        st = self.state
        for uid in list(uids):
            entry = st.pods[uid]
            pod = entry.pod
            services = st.matching_services(pod)
            refs, related = st.pod_refs(pod, services)
            if refs == entry.refs and related == entry.related:
                continue
            st.pods[uid] = msgspec.structs.replace(
                entry,
                refs=refs,
                related=related,
                services=services,
                encoded_refs=render_refs(refs),
                body=None,
            )
            self._move_refs(entry.node, entry.related, entry.node, related, touched)
            if entry.node:
                touched.append((entry.node, entry.key))
            self._record("Pod", pod, pod)

    def _move_refs(
        self,
        old_node: str,
        old_related: tuple[Key, ...],
        new_node: str,
        new_related: tuple[Key, ...],
        touched: Touched,
    ) -> None:
        """Move one pod's references from (old node, old keys) to (new node, new keys).

        ``key_nodes[key][node]`` counts the pods on ``node`` that reference ``key``; a key
        enters a node's view when its count becomes 1 and leaves it when the count reaches 0.
        Unscheduled pods (node "") reference nothing.
        """
        if not old_node:
            old_related = ()
        if not new_node:
            new_related = ()
        if old_node == new_node:
            removed: Sequence[Key] = [k for k in old_related if k not in new_related]
            added: Sequence[Key] = [k for k in new_related if k not in old_related]
        else:
            removed, added = old_related, new_related
        key_nodes = self.state.key_nodes
        for key in removed:
            nodes = key_nodes[key]
            count = nodes[old_node] - 1
            if count:
                nodes[old_node] = count
                continue
            del nodes[old_node]
            if not nodes:
                del key_nodes[key]
            touched.append((old_node, key))
            if key[1] in self.state.objects[key[0]]:  # an absent object was in no view
                self._depart(old_node, key)
        for key in added:
            counts = key_nodes.get(key)
            if counts is None:
                counts = key_nodes[key] = {}
            count = counts.get(new_node, 0)
            counts[new_node] = count + 1
            if not count:
                touched.append((new_node, key))

    # --- departures (the departure log's input) -------------------------------------------
    def _depart(self, node: str, key: Key) -> None:
        """``key`` just left ``view(node)``."""
        if self.track_departures:
            self.departed.append((node, key))

    def _depart_everywhere(self, key: Key) -> None:
        """``key``'s object was deleted: it leaves the view of every node whose pods refer to it."""
        if self.track_departures:
            self.departed.extend((node, key) for node in self.state.key_nodes.get(key, ()))

    # --- everything else -------------------------------------------------------------------
    def _set(self, kind: str, uid: str, new: Object | None) -> None:
        if new is None:
            self.state.objects[kind].pop(uid, None)
        else:
            self.state.objects[kind][uid] = new
        self.state.bodies.pop((kind, uid), None)

    def _touch_key(self, key: Key, touched: Touched) -> None:
        for node in self.state.key_nodes.get(key, ()):
            touched.append((node, key))

    def _index_service(self, uid: str, old: Object | None, new: Object | None) -> None:
        index = self.state.services_by_label
        if isinstance(old, Service) and (label := index_label(old)) is not None:
            in_namespace = index[old.metadata.namespace]
            _discard(in_namespace, label, uid)
            if not in_namespace:
                del index[old.metadata.namespace]
        if isinstance(new, Service) and (label := index_label(new)) is not None:
            index.setdefault(new.metadata.namespace, {}).setdefault(label, set()).add(uid)

    def _record(self, kind: str, old: Object | None, new: Object | None) -> None:
        """Collect the cluster-wide change for the CloudEvents sink, when asked to."""
        if not self.track_changes:
            return
        obj = new if new is not None else old
        assert obj is not None
        reason: Reason = "Create" if old is None else "Delete" if new is None else "Update"
        meta = obj.metadata
        status = refs = None
        if isinstance(obj, Pod) and new is not None:
            status = render_status(obj)
            refs = {k: list(v) for k, v in self.state.pods[meta.uid].refs}
        self.changes.append(
            ObjectChange(
                reason=reason,
                kind=kind,
                uid=meta.uid,
                namespace=meta.namespace,
                name=meta.name,
                node=obj.spec.nodeName if isinstance(obj, Pod) else "",
                meta=render_meta(kind, obj),
                status=status,
                refs=refs,
                observed_at=self.now,
                version=meta.resourceVersion,
                cause_version=self.cause_version,
                initial=self.initial,
            )
        )


def _add(index: dict[str, set[str]], key: str, uid: str) -> None:
    if key:
        index.setdefault(key, set()).add(uid)


def _discard(
    index: dict[str, set[Key]] | dict[str, set[str]] | dict[tuple[str, str], set[str]],
    key: Any,
    item: object,
) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(item)
        if not members:
            del index[key]
