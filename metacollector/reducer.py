"""The reducer: apply one cluster change to ClusterState, say which node views it touched.

Pure and deterministic. ``apply`` returns every (node, key) whose presence in ``view(node)`` or
whose rendered event may have changed; mailboxes re-evaluate those keys against the state when
they send (level-triggered), so over-reporting costs a comparison, never a wrong event.
Owners are resolved through ownerReferences (not name prefixes), and a referenced object leaves
a node's view when its last referencing pod there goes (SPEC section 2's deliberate fixes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from metacollector.changes import ObjectChange, Reason
from metacollector.model import Object, Pod, Service, content
from metacollector.render import render_meta, render_status
from metacollector.state import ClusterState, Key, PodEntry, index_label

ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]
Touched = list[tuple[str, Key]]


@dataclass
class Reducer:
    state: ClusterState = field(default_factory=ClusterState)
    track_changes: bool = False  # collect cluster-wide ObjectChanges (for the CloudEvents sink)
    changes: list[ObjectChange] = field(default_factory=list)
    now: float = 0.0  # caller's clock, stamped on ObjectChanges

    def apply(self, change_type: ChangeType, kind: str, obj: Object) -> Touched:
        """Apply one change; return the (node, key) pairs it touched."""
        uid = obj.metadata.uid
        old = self.state.objects[kind].get(uid)
        if change_type == "DELETED":
            if old is None:
                return []
            new: Object | None = None
        else:
            new = obj
            if old is not None and content(old) == content(new):
                self.state.objects[kind][uid] = new  # keep the newest resourceVersion
                return []
        touched: Touched = []
        if kind == "Pod":
            self._apply_pod(uid, old, new, touched)
            return touched
        self._set(kind, uid, new)
        self._touch_key((kind, uid), touched)
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
    def _apply_pod(
        self, uid: str, old: Object | None, new: Object | None, touched: Touched
    ) -> None:
        st = self.state
        old_entry = st.pods.pop(uid, None)
        self._set("Pod", uid, new)
        new_entry: PodEntry | None = None
        if isinstance(new, Pod):
            refs, related = st.pod_refs(new)
            owner = new.metadata.controller()
            new_entry = PodEntry(
                node=new.spec.nodeName,
                namespace=new.metadata.namespace,
                owner_uid=owner.uid if owner else "",
                refs=refs,
                related=related,
            )
            st.pods[uid] = new_entry
        for index, attr in (
            (st.pods_by_node, "node"),
            (st.pods_by_namespace, "namespace"),
            (st.pods_by_owner, "owner_uid"),
        ):
            before = getattr(old_entry, attr) if old_entry is not None else ""
            after = getattr(new_entry, attr) if new_entry is not None else ""
            if before != after or new_entry is None:
                _discard(index, before, uid)
            if before != after or old_entry is None:
                _add(index, after, uid)
        if not (
            old_entry is not None
            and new_entry is not None
            and old_entry.node == new_entry.node
            and old_entry.related == new_entry.related
        ):
            self._move_refs(old_entry, new_entry, touched)
        key: Key = ("Pod", uid)
        if old_entry is not None and old_entry.node:
            touched.append((old_entry.node, key))
        if (
            new_entry is not None
            and new_entry.node
            and (old_entry is None or new_entry.node != old_entry.node)
        ):
            touched.append((new_entry.node, key))
        self._record("Pod", old, new)

    def _refresh_pods(self, uids: set[str] | tuple[()], touched: Touched) -> None:
        """Recompute the refs of pods whose referenced objects changed."""
        st = self.state
        for uid in list(uids):
            entry = st.pods[uid]
            pod = st.objects["Pod"][uid]
            assert isinstance(pod, Pod)
            refs, related = st.pod_refs(pod)
            if refs == entry.refs and related == entry.related:
                continue
            new_entry = PodEntry(entry.node, entry.namespace, entry.owner_uid, refs, related)
            st.pods[uid] = new_entry
            st.bodies.pop(("Pod", uid), None)
            self._move_refs(entry, new_entry, touched)
            if entry.node:
                touched.append((entry.node, ("Pod", uid)))
            self._record("Pod", pod, pod)

    def _move_refs(self, old: PodEntry | None, new: PodEntry | None, touched: Touched) -> None:
        old_node = old.node if old else ""
        new_node = new.node if new else ""
        old_related = set(old.related) if old and old_node else set()
        new_related = set(new.related) if new and new_node else set()
        if old_node == new_node:
            removed, added = old_related - new_related, new_related - old_related
        else:
            removed, added = old_related, new_related
        for key in removed:
            self._ref(old_node, key, -1, touched)
        for key in added:
            self._ref(new_node, key, +1, touched)

    def _ref(self, node: str, key: Key, delta: int, touched: Touched) -> None:
        st = self.state
        nodes = st.key_nodes.setdefault(key, {})
        count = nodes.get(node, 0) + delta
        if count > 0:
            nodes[node] = count
            if count == 1 and delta > 0:
                st.node_keys.setdefault(node, set()).add(key)
                touched.append((node, key))
            return
        nodes.pop(node, None)
        if not nodes:
            del st.key_nodes[key]
        _discard(st.node_keys, node, key)
        touched.append((node, key))

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
            _discard(index, label, uid)
        if isinstance(new, Service) and (label := index_label(new)) is not None:
            index.setdefault(label, set()).add(uid)

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
            )
        )


def _add(index: dict[str, set[str]], key: str, uid: str) -> None:
    if key:
        index.setdefault(key, set()).add(uid)


def _discard(
    index: dict[str, set[Key]] | dict[str, set[str]] | dict[tuple[str, str, str], set[str]],
    key: Any,
    item: object,
) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(item)
        if not members:
            del index[key]
