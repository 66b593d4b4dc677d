"""The emulator's storage: objects, one global resourceVersion, bounded event history, watchers.

Imitates the API server over etcd: every write gets the next resourceVersion; watches replay
history after a resourceVersion and then follow live writes; history is bounded, so an old
resourceVersion is "Expired" (410). Pure data structure, no I/O.

Stored objects are never mutated after commit: a new version is a shallow copy that shares its
unchanged subtrees (spec, status, ...) with the old one, so writes need no deep copies.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio

Obj = dict[str, Any]

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class ResourceInfo:
    plural: str
    kind: str
    group: str
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """The objects' ``apiVersion``, also the group/version of their URLs."""
        return f"{self.group}/{self.version}" if self.group else self.version


RBAC = "rbac.authorization.k8s.io"
RESOURCES: dict[str, ResourceInfo] = {
    r.plural: r
    for r in (
        ResourceInfo("pods", "Pod", "", "v1", True, ("po",)),
        ResourceInfo("namespaces", "Namespace", "", "v1", False, ("ns",)),
        ResourceInfo("services", "Service", "", "v1", True, ("svc",)),
        ResourceInfo("replicationcontrollers", "ReplicationController", "", "v1", True, ("rc",)),
        ResourceInfo("nodes", "Node", "", "v1", False, ("no",)),
        ResourceInfo("deployments", "Deployment", "apps", "v1", True, ("deploy",)),
        ResourceInfo("replicasets", "ReplicaSet", "apps", "v1", True, ("rs",)),
        ResourceInfo("daemonsets", "DaemonSet", "apps", "v1", True, ("ds",)),
        # stored and served, not watched by the collector: the kinds of k8s/ and the chart
        # (also k8s/ha, k8s/networkpolicy), and the Leases of leader election
        ResourceInfo("serviceaccounts", "ServiceAccount", "", "v1", True, ("sa",)),
        ResourceInfo("configmaps", "ConfigMap", "", "v1", True, ("cm",)),
        ResourceInfo("clusterroles", "ClusterRole", RBAC, "v1", False),
        ResourceInfo("clusterrolebindings", "ClusterRoleBinding", RBAC, "v1", False),
        ResourceInfo("roles", "Role", RBAC, "v1", True),
        ResourceInfo("rolebindings", "RoleBinding", RBAC, "v1", True),
        ResourceInfo("leases", "Lease", "coordination.k8s.io", "v1", True),
        ResourceInfo("poddisruptionbudgets", "PodDisruptionBudget", "policy", "v1", True, ("pdb",)),
        ResourceInfo(
            "networkpolicies", "NetworkPolicy", "networking.k8s.io", "v1", True, ("netpol",)
        ),
    )
}
GROUP_VERSIONS: dict[str, str] = {info.group: info.version for info in RESOURCES.values()}
WORKLOADS = {"deployments", "replicasets", "daemonsets", "replicationcontrollers"}


class Conflict(Exception):
    pass


class NotFound(Exception):
    pass


class AlreadyExists(Exception):
    pass


@dataclass(slots=True)
class Stored:
    obj: Obj
    data: bytes  # the object's JSON
    rv: int


@dataclass(slots=True)
class Event:
    rv: int
    plural: str
    type: str  # ADDED / MODIFIED / DELETED
    obj: Obj
    data: bytes
    _line: bytes | None = None
    _partial_line: bytes | None = None

    def line(self) -> bytes:
        """The watch line, encoded once and shared by every watcher."""
        if self._line is None:
            self._line = b'{"type":"' + self.type.encode() + b'","object":' + self.data + b"}\n"
        return self._line

    def partial_line(self) -> bytes:
        """The metadata-only (PartialObjectMetadata) watch line, also encoded once."""
        if self._partial_line is None:
            obj = partial(self.obj)
            self._partial_line = _encode({"type": self.type, "object": obj}) + b"\n"
        return self._partial_line


@dataclass(eq=False)
class Watcher:
    plural: str
    predicate: Callable[[Obj], bool] | None
    send: trio.MemorySendChannel[Event | None]  # None: expired (compaction, fell behind)
    expired: bool = False


def partial(obj: Obj, list_item: bool = False) -> Obj:
    """The object's PartialObjectMetadata (metadata only); a list item carries no kind."""
    out: Obj = {"metadata": obj["metadata"]}
    if not list_item:
        out = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", **out}
    return out


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Store:
    history_size: int = 10000
    watcher_queue: int = 10000
    rv: int = 1
    compacted_rv: int = 1  # watches from an rv below this are Expired
    objects: dict[str, dict[tuple[str, str], Stored]] = field(
        default_factory=lambda: {p: {} for p in RESOURCES}
    )
    history: deque[Event] = field(default_factory=deque)
    watchers: dict[str, set[Watcher]] = field(default_factory=lambda: {p: set() for p in RESOURCES})
    _sorted: dict[str, list[tuple[str, str]] | None] = field(
        default_factory=lambda: {p: None for p in RESOURCES}
    )
    snapshots: dict[str, tuple[int, list[Stored]]] = field(default_factory=dict)

    # --- reads -----------------------------------------------------------------------------
    def get(self, plural: str, namespace: str, name: str) -> Stored:
        stored = self.objects[plural].get((namespace, name))
        if stored is None:
            raise NotFound(name)
        return stored

    def keys(self, plural: str) -> list[tuple[str, str]]:
        """Keys in the order the API server lists them (namespace, then name)."""
        keys = self._sorted[plural]
        if keys is None:
            keys = self._sorted[plural] = sorted(self.objects[plural])
        return keys

    def items(self, plural: str, namespace: str = "") -> Iterator[Stored]:
        objects = self.objects[plural]
        for key in self.keys(plural):
            if not namespace or key[0] == namespace:
                yield objects[key]

    # --- writes ----------------------------------------------------------------------------
    def _commit(self, plural: str, event_type: str, obj: Obj) -> Stored:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        data = _encode(obj)
        stored = Stored(obj, data, self.rv)
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        objects = self.objects[plural]
        if event_type == "DELETED":
            objects.pop(key, None)
            self._sorted[plural] = None
        else:
            if key not in objects:
                self._sorted[plural] = None
            objects[key] = stored
        event = Event(self.rv, plural, event_type, obj, data)
        self.history.append(event)
        while len(self.history) > self.history_size:
            self.compacted_rv = self.history.popleft().rv
        for watcher in list(self.watchers[plural]):
            if watcher.predicate is None or watcher.predicate(obj):
                self._deliver(watcher, event)
        return stored

    def _deliver(self, watcher: Watcher, event: Event | None) -> None:
        try:
            watcher.send.send_nowait(event)
        except trio.WouldBlock:  # fell behind: like the real server, end it with Expired
            watcher.expired = True
            self.watchers[watcher.plural].discard(watcher)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.watchers[watcher.plural].discard(watcher)

    def create(self, plural: str, obj: Obj) -> Stored:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects[plural]:
            raise AlreadyExists(meta["name"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("resourceVersion", None)
        if plural in WORKLOADS:
            meta["generation"] = 1
        info = RESOURCES[plural]
        obj["apiVersion"], obj["kind"] = info.api_version, info.kind
        return self._commit(plural, "ADDED", obj)

    def update(self, plural: str, obj: Obj, *, subresource: str = "") -> Stored:
        meta = obj.setdefault("metadata", {})
        old = self.get(plural, meta.get("namespace", ""), meta.get("name", ""))
        rv = meta.get("resourceVersion")
        if rv and rv != str(old.rv):
            raise Conflict(meta["name"])
        new = {**old.obj, "metadata": dict(old.obj["metadata"])} if subresource else obj
        if subresource == "status":
            new["status"] = obj.get("status", {})
        else:
            for server_field in ("uid", "creationTimestamp", "generation"):
                if server_field in old.obj["metadata"]:
                    new["metadata"][server_field] = old.obj["metadata"][server_field]
            if plural == "pods" and "status" in old.obj:  # status only via the subresource
                new["status"] = old.obj["status"]
            if plural in WORKLOADS and new.get("spec") != old.obj.get("spec"):
                new["metadata"]["generation"] = old.obj["metadata"].get("generation", 1) + 1
        info = RESOURCES[plural]
        new["apiVersion"], new["kind"] = info.api_version, info.kind
        if _same(new, old.obj):
            return old  # a no-op write does not bump resourceVersion, as in the real server
        return self._commit(plural, "MODIFIED", new)

    def delete(self, plural: str, namespace: str, name: str) -> Stored:
        old = self.get(plural, namespace, name)
        obj = {**old.obj, "metadata": dict(old.obj["metadata"])}  # _commit sets its rv
        return self._commit(plural, "DELETED", obj)

    def load(self, plural: str, obj: Obj) -> None:
        """Bulk-load one object at start (synthetic clusters): no history, no watchers."""
        info = RESOURCES[plural]
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        obj["apiVersion"], obj["kind"] = info.api_version, info.kind
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[plural][(meta.get("namespace", ""), meta["name"])] = Stored(
            obj, _encode(obj), self.rv
        )
        self._sorted[plural] = None
        self.compacted_rv = self.rv

    # --- watches ---------------------------------------------------------------------------
    def watch(
        self, plural: str, since: int, predicate: Callable[[Obj], bool] | None
    ) -> tuple[Watcher, trio.MemoryReceiveChannel[Event | None], list[Event]]:
        """Register a watcher; return it, its live channel and the history after ``since``."""
        if since < self.compacted_rv:
            raise Expired(since)
        send, receive = trio.open_memory_channel[Event | None](self.watcher_queue)
        watcher = Watcher(plural, predicate, send)
        self.watchers[plural].add(watcher)
        backlog = [
            e
            for e in self.history
            if e.rv > since and e.plural == plural and (predicate is None or predicate(e.obj))
        ]
        return watcher, receive, backlog

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers[watcher.plural].discard(watcher)
        watcher.send.close()

    def compact(self) -> None:
        """Expire all history now: open watches end with an in-band 410."""
        self.history.clear()
        self.compacted_rv = self.rv  # nothing before now can be replayed
        for watchers in self.watchers.values():
            for watcher in list(watchers):
                watcher.expired = True
                self._deliver(watcher, None)
            watchers.clear()
        self.snapshots.clear()

    def new_epoch(self, jump: int = 1_000_000) -> None:
        """Imitate an etcd restore: every object gets a new, much higher resourceVersion, the
        history is gone, old resourceVersions are Expired."""
        self.compact()
        self.rv += jump
        for plural, objects in self.objects.items():
            for key, stored in list(objects.items()):
                self.rv += 1
                meta = {**stored.obj["metadata"], "resourceVersion": str(self.rv)}
                obj = {**stored.obj, "metadata": meta}
                objects[key] = Stored(obj, _encode(obj), self.rv)
            self._sorted[plural] = None
        self.compacted_rv = self.rv


class Expired(Exception):
    pass


def _same(a: Obj, b: Obj) -> bool:
    strip = ("resourceVersion", "managedFields")
    ma = {k: v for k, v in a.get("metadata", {}).items() if k not in strip}
    mb = {k: v for k, v in b.get("metadata", {}).items() if k not in strip}
    return ma == mb and {k: v for k, v in a.items() if k != "metadata"} == {
        k: v for k, v in b.items() if k != "metadata"
    }
