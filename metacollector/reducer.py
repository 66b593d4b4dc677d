"""The reducer: apply one cluster change to ClusterState, say what it touched and changed.

Pure and deterministic. ``apply`` returns an ``Outcome``: every (node, key) whose presence in
``view(node)`` or whose rendered event may have changed, and every object whose cluster-wide
rendering changed. Mailboxes re-evaluate the touched keys against the state when they send
(level-triggered), so over-reporting costs a comparison, never a wrong event; what to do with
either list is the hub's business.
Owners are resolved through ownerReferences (not name prefixes), and a referenced object leaves
a node's view when its last referencing pod there goes (SPEC section 2's deliberate fixes).

Cost: linear in what a change changes. A pod change costs its own refs and the label keys
Services select on; a Service change costs the pods it selected and selects (found through the
label index, never by scanning the namespace), one set operation each, except that the first
Service selecting on a label key new to its namespace indexes that namespace's pods under the
key, once; a Namespace or ReplicaSet change costs the pods whose owner refs it changes. No path
compares a pod's Service list item by item: the sorted UIDs are rendered once, when the pod's
event is next needed (``ClusterState.event_body``). tests/core/test_cost.py counts it;
bench/complexity.py measures it.

Splitting (``pods_per_step``): one change can be work for every pod of a namespace (a Service
selecting them all, a Namespace arriving after its pods). With ``pods_per_step`` set, ``apply``
does that per-pod work that many pods at a time and leaves the rest in ``pending`` for
``resume``; the caller resumes it before it applies anything else, so no other change ever sees
a half-applied one. Between steps each pod is whole (its refs as of the pods done so far). By
default (None) ``apply`` applies a change whole.

Departures (for the departure log): with ``track_departures``, each (node, key) is appended to
``departed`` at the moment it leaves ``view(node)``; exact, unlike ``touched``, and recorded at
the four places where a view shrinks: a pod deleted, a pod moved off a node, a referenced key's
pod count on a node reaching 0 while its object exists (``ClusterState.unreference``), and a
non-pod object deleted (it leaves every node that referenced it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from metacollector.events import Edit, Key, NodeKey, Outcome, WatchType
from metacollector.model import Object, Pod, Service, same_content
from metacollector.state import (
    ClusterState,
    PodEntry,
    ServiceEntry,
    discard_member,
    pod_services,
)

_NO_LABELS: dict[str, str] = {}


@dataclass
class PodWork:
    """Per-pod work a change left: ``step`` for each of ``uids[done:]``, in order."""

    uids: list[str]
    step: Callable[[str, Outcome], None]
    done: int = 0


class Reducer:
    def __init__(
        self,
        state: ClusterState | None = None,
        track_departures: bool = False,
        pods_per_step: int | None = None,
    ) -> None:
        self.state = state if state is not None else ClusterState()
        self.departed: list[NodeKey] = []  # filled only with ``track_departures``
        # What ``ClusterState.unreference`` appends departures to: None when not tracking.
        self._departed: list[NodeKey] | None = self.departed if track_departures else None
        self.pods_per_step = pods_per_step  # None: every change applied whole
        self.pending: deque[PodWork] = deque()  # the last change's per-pod work not done yet

    def resume(self, out: Outcome) -> bool:
        """Do the next ``pods_per_step`` pods of the pending work (all of it when None),
        appending to ``out``; True when no work is left."""
        pending = self.pending
        budget = self.pods_per_step
        while pending:
            work = pending[0]
            end = len(work.uids) if budget is None else min(len(work.uids), work.done + budget)
            step = work.step
            for uid in work.uids[work.done : end]:
                step(uid, out)
            if budget is not None:
                budget -= end - work.done
            work.done = end
            if end == len(work.uids):
                pending.popleft()
            if budget == 0:
                break
        return not pending

    def _defer(self, uids: list[str], step: Callable[[str, Outcome], None]) -> None:
        """Queue per-pod work of the change being applied (``apply`` starts on it)."""
        if uids:
            self.pending.append(PodWork(uids, step))

    def apply(
        self, change_type: WatchType, kind: str, obj: Object, out: Outcome | None = None
    ) -> Outcome:
        """Apply one change; return the (node, key) pairs it touched and what it changed,
        appended to ``out`` when given (the hub passes one per slice: nothing allocated per
        change; with ``out.changed`` None, what changed is not recorded)."""
        if out is None:
            out = Outcome([], [])
        assert not self.pending, "a split change must be resumed to its end first"
        if kind == "Pod":
            # Pods live in ``state.pods`` only: one lookup per change (the state is far larger
            # than the CPU caches, so each lookup of a cold object costs more than the Python).
            pod_uid = obj.metadata.uid
            entry = self.state.pods.get(pod_uid)
            if change_type == "DELETED":
                if entry is not None:
                    self._delete_pod(pod_uid, entry, out)
                return out
            assert isinstance(obj, Pod)
            if entry is None:
                self._add_pod(pod_uid, obj, out)
            else:
                self._update_pod(pod_uid, entry, obj, out)
            return out
        st = self.state
        uid = obj.metadata.uid
        objects = st.objects[kind]
        old = objects.get(uid)
        if change_type == "DELETED":
            if old is None:
                return out
            new: Object | None = None
            del objects[uid]
        else:
            new = obj
            objects[uid] = new
            if old is not None and same_content(old, new):
                return out  # kept the newest resourceVersion; nothing we use changed
        key = (kind, uid)
        st.invalidate(key)
        st.touch(key, out.touched)
        if new is None and self._departed is not None:
            # deleted: it leaves the view of every node whose pods refer to it (before the
            # refreshes below unreference it, which report no departure for an absent object)
            self._departed.extend((node, key) for node in st.key_nodes.get(key, ()))
        if out.changed is not None:
            out.changed.append(Edit(kind, old, new))
        if kind == "Namespace":
            name = obj.metadata.name  # one uid, one name
            old_uid = st.namespace_uids.get(name)
            if new is None:
                if old_uid == uid:
                    del st.namespace_uids[name]
            else:
                st.namespace_uids[name] = uid
            if st.namespace_uids.get(name) != old_uid:
                self._refresh_owner_refs(st.pods_by_namespace.get(name, ()))
        elif kind == "ReplicaSet":
            old_owner = old.metadata.controller() if old else None
            new_owner = new.metadata.controller() if new else None
            if old is None or new is None or old_owner != new_owner:
                self._refresh_owner_refs(st.pods_by_owner.get(uid, ()))
        elif kind == "Service":
            self._reselect(uid, old, new, out)
        if self.pending:
            self.resume(out)
        return out

    # --- pods ------------------------------------------------------------------------------
    def _add_pod(self, uid: str, pod: Pod, out: Outcome) -> None:
        st = self.state
        meta, node, namespace = pod.metadata, pod.spec.nodeName, pod.metadata.namespace
        owner_refs, owner_keys = st.chains.acquire(st.owner_refs(pod))
        owner = meta.controller()
        owner_uid = owner.uid if owner is not None else ""
        services = st.matching_services(pod)
        entry = PodEntry(
            ("Pod", uid),
            pod,
            node,
            namespace,
            owner_uid,
            owner_refs,
            owner_keys,
            pod_services(services),
        )
        st.pods[uid] = entry
        _add(st.pods_by_node, node, uid)
        _add(st.pods_by_namespace, namespace, uid)
        _add(st.pods_by_owner, owner_uid, uid)
        labels = st.selected_labels(namespace, meta.labels)
        if labels:
            st.index_pod_labels(namespace, uid, labels)
        touched = out.touched
        st.reference(node, owner_keys, touched)
        if services:
            for key in services:
                st.services[key[1]].pods.add(uid)
            st.reference(node, services, touched)
        if node:
            touched.append((node, entry.key))
        if out.changed is not None:
            out.changed.append(Edit("Pod", None, pod))

    def _update_pod(self, uid: str, entry: PodEntry, new: Pod, out: Outcome) -> None:
        """Each field is compared once; what a change cannot alter is kept in ``entry``."""
        st = self.state
        old = entry.pod
        a, b = old.metadata, new.metadata
        node, old_node = new.spec.nodeName, entry.node
        owners_kept = a.ownerReferences == b.ownerReferences and a.namespace == b.namespace
        labels_kept = a.labels == b.labels
        # What the rendered event depends on besides labels and refs (it has no node in it).
        rest_kept = (
            old.status == new.status and a.name == b.name and a.generateName == b.generateName
        )
        entry.pod = new  # at least the newest resourceVersion
        if owners_kept and labels_kept and rest_kept and node == old_node:
            return
        refs_changed = False
        owner_keys = entry.owner_keys
        if not owners_kept:
            owner_refs, owner_keys = st.chains.acquire(st.owner_refs(new))
            st.chains.release((entry.owner_refs, entry.owner_keys))
            refs_changed = owner_refs != entry.owner_refs
            entry.owner_refs = owner_refs
            owner = b.controller()
            owner_uid = owner.uid if owner is not None else ""
            if owner_uid != entry.owner_uid:
                discard_member(st.pods_by_owner, entry.owner_uid, uid)
                _add(st.pods_by_owner, owner_uid, uid)
                entry.owner_uid = owner_uid
        # Services change only through Service changes (which update the pods they select) and
        # through the pod's own labels and namespace.
        lost: Sequence[Key] = ()
        gained: Sequence[Key] = ()
        if a.namespace != b.namespace:
            discard_member(st.pods_by_namespace, entry.namespace, uid)
            _add(st.pods_by_namespace, b.namespace, uid)
            st.unindex_pod_labels(a.namespace, uid, st.selected_labels(a.namespace, a.labels))
            st.index_pod_labels(b.namespace, uid, st.selected_labels(b.namespace, b.labels))
            entry.namespace = b.namespace
            now = set(st.matching_services(new))
            lost = [key for key in entry.services if key not in now]
            gained = [key for key in now if key not in entry.services]
        elif not labels_kept:
            lost, gained = st.relabel_pod(
                entry, new, a.labels or _NO_LABELS, b.labels or _NO_LABELS
            )
        touched = out.touched
        if node != old_node:
            st.unreference(old_node, entry.owner_keys, touched, self._departed)
            if entry.services:
                st.unreference(old_node, entry.services, touched, self._departed)
            discard_member(st.pods_by_node, old_node, uid)
            _add(st.pods_by_node, node, uid)
            entry.node = node
        elif owner_keys != entry.owner_keys:
            st.unreference(
                node, [k for k in entry.owner_keys if k not in owner_keys], touched, self._departed
            )
            st.reference(node, [k for k in owner_keys if k not in entry.owner_keys], touched)
        entry.owner_keys = owner_keys
        services = st.services
        for key in lost:
            entry.remove_service(key)
            services[key[1]].pods.discard(uid)
            refs_changed = True
        for key in gained:
            entry.add_service(key)
            services[key[1]].pods.add(uid)
            refs_changed = True
        if node != old_node:
            st.reference(node, owner_keys, touched)
            if entry.services:
                st.reference(node, entry.services, touched)
        elif refs_changed:
            st.unreference(node, lost, touched, self._departed)
            st.reference(node, gained, touched)
        if refs_changed or not labels_kept or not rest_kept:
            entry.invalidate(refs=refs_changed)
        key = entry.key
        if old_node:
            touched.append((old_node, key))
            if node != old_node and self._departed is not None:
                self._departed.append((old_node, key))  # moved off ``old_node``
        if node and node != old_node:
            touched.append((node, key))
        if out.changed is not None:
            out.changed.append(Edit("Pod", old, new))

    def _delete_pod(self, uid: str, entry: PodEntry, out: Outcome) -> None:
        st = self.state
        del st.pods[uid]
        st.chains.release((entry.owner_refs, entry.owner_keys))
        discard_member(st.pods_by_node, entry.node, uid)
        discard_member(st.pods_by_namespace, entry.namespace, uid)
        discard_member(st.pods_by_owner, entry.owner_uid, uid)
        labels = st.selected_labels(entry.namespace, entry.pod.metadata.labels)
        if labels:
            st.unindex_pod_labels(entry.namespace, uid, labels)
        touched = out.touched
        st.unreference(entry.node, entry.owner_keys, touched, self._departed)
        if entry.services:
            for key in entry.services:
                st.services[key[1]].pods.discard(uid)
            st.unreference(entry.node, entry.services, touched, self._departed)
        if entry.node:
            touched.append((entry.node, entry.key))
            if self._departed is not None:
                self._departed.append((entry.node, entry.key))
        if out.changed is not None:
            out.changed.append(Edit("Pod", entry.pod, None))

    def _refresh_owner_refs(self, uids: Iterable[str]) -> None:
        """Queue the owner refs of pods whose Namespace or ReplicaSet changed to be recomputed:
        one pod at a time (``_refresh_one``), their Services untouched."""
        uids = list(uids)
        self.state.ops += len(uids)
        self._defer(uids, self._refresh_one)

    def _refresh_one(self, uid: str, out: Outcome) -> None:
        st = self.state
        entry = st.pods[uid]
        owner_refs, owner_keys = st.owner_refs(entry.pod)
        if owner_refs == entry.owner_refs and owner_keys == entry.owner_keys:
            return
        owner_refs, owner_keys = st.chains.acquire((owner_refs, owner_keys))
        st.chains.release((entry.owner_refs, entry.owner_keys))
        node, old_keys = entry.node, entry.owner_keys
        touched = out.touched
        st.unreference(node, [k for k in old_keys if k not in owner_keys], touched, self._departed)
        st.reference(node, [k for k in owner_keys if k not in old_keys], touched)
        entry.owner_refs, entry.owner_keys = owner_refs, owner_keys
        entry.invalidate(refs=True)
        if node:
            touched.append((node, entry.key))
        if out.changed is not None:
            out.changed.append(Edit("Pod", entry.pod, entry.pod))

    # --- Services --------------------------------------------------------------------------
    def _reselect(self, uid: str, old: Object | None, new: Object | None, out: Outcome) -> None:
        """Move a Service between the pods it selected and the pods it selects now: O(those
        pods), each one set operation (no pod's other Services are looked at)."""
        old_svc = old if isinstance(old, Service) else None
        new_svc = new if isinstance(new, Service) else None
        old_sel = old_svc.spec.selector if old_svc is not None else None
        new_sel = new_svc.spec.selector if new_svc is not None else None
        if (
            old_svc is not None
            and new_svc is not None
            and old_sel == new_sel
            and old_svc.metadata.namespace == new_svc.metadata.namespace
        ):
            return
        st = self.state
        entry = st.services.get(uid)
        key: Key = entry.key if entry is not None else ("Service", uid)
        before = entry.pods if entry is not None else set()
        if old_svc is not None:
            st.unindex_service(uid, old_svc)
        pods, departed = st.pods, self._departed
        one = (key,)

        def leave(pod_uid: str, out: Outcome) -> None:
            entry = pods[pod_uid]
            entry.remove_service(key)
            st.unreference(entry.node, one, out.touched, departed)
            _service_moved(entry, out)

        def join(pod_uid: str, out: Outcome) -> None:
            entry = pods[pod_uid]
            entry.add_service(key)
            st.reference(entry.node, one, out.touched)
            _service_moved(entry, out)

        def select() -> None:
            """Look up the pods the Service selects now (the label index complete) and queue
            the moves between them and those it selected."""
            if new_svc is not None and new_sel:
                after = st.selected_pods(new_svc)
                if entry is None:
                    st.services[uid] = ServiceEntry(key, after)
                else:
                    entry.pods = after
            else:
                after = set()
                st.services.pop(uid, None)
            st.ops += len(before) + len(after)
            # set differences: C speed, any size (and no difference taken with an empty set)
            self._defer(list(before - after) if after else list(before), leave)
            self._defer(list(after - before) if before else list(after), join)

        if new_svc is not None and new_sel:
            new_keys = st.index_service(uid, new_svc)
            if new_keys:  # its namespace's pods indexed under them first, pod by pod
                namespace = new_svc.metadata.namespace

                def index(pod_uid: str, out: Outcome) -> None:
                    st.index_pod_keys(namespace, new_keys, pod_uid)

                self._defer(list(st.pods_by_namespace.get(namespace, ())), index)
                self._defer([uid], lambda _uid, _out: select())
                return
        select()


def _service_moved(entry: PodEntry, out: Outcome) -> None:
    """A pod's Service list changed: its refs are rendered again, its node re-evaluates it."""
    entry.invalidate(refs=True)
    if entry.node:
        out.touched.append((entry.node, entry.key))
    if out.changed is not None:
        out.changed.append(Edit("Pod", entry.pod, entry.pod))


def _add(index: dict[str, set[str]], key: str, uid: str) -> None:
    if key:
        members = index.get(key)
        if members is None:
            index[key] = {uid}
        else:
            members.add(uid)
