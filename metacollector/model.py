"""Slim immutable projections of the seven watched kinds: only the fields we send or index.

Decoded straight from Kubernetes JSON (full objects or PartialObjectMetadata) with msgspec, which
skips every other field without building it; that is most of the cost of a pod watch line.
"""

from __future__ import annotations

import sys
from typing import Final, Generic, TypeAlias, TypeVar

import msgspec

Value = TypeVar("Value")

KINDS: Final = (
    "Pod",
    "Namespace",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "ReplicationController",
    "Service",
)
CLUSTER_SCOPED: Final = frozenset({"Namespace"})
# Kinds a pod's controlling owner may have for that owner to be part of a node's view.
VIEW_OWNER_KINDS: Final = frozenset({"ReplicaSet", "DaemonSet", "ReplicationController"})


class OwnerReference(msgspec.Struct, frozen=True, gc=False):
    kind: str = ""
    uid: str = ""
    name: str = ""
    controller: bool | None = None


class ObjectMeta(msgspec.Struct, frozen=True, gc=False):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resourceVersion: str = ""
    generateName: str = ""
    labels: dict[str, str] | None = None
    ownerReferences: tuple[OwnerReference, ...] = ()

    def controller(self) -> OwnerReference | None:
        """The controlling owner (the ownerReference with ``controller: true``), if any."""
        for ref in self.ownerReferences:
            if ref.controller:
                return ref
        return None


class PodSpec(msgspec.Struct, frozen=True, gc=False):
    nodeName: str = ""


class PodStatus(msgspec.Struct, frozen=True, gc=False):
    podIP: str = ""


class ServiceSpec(msgspec.Struct, frozen=True, gc=False):
    selector: dict[str, str] | None = None


class Pod(msgspec.Struct, frozen=True, gc=False):
    metadata: ObjectMeta = ObjectMeta()
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()


class Service(msgspec.Struct, frozen=True, gc=False):
    metadata: ObjectMeta = ObjectMeta()
    spec: ServiceSpec = ServiceSpec()


class Metadata(msgspec.Struct, frozen=True, gc=False):
    """Any kind of which we keep only metadata (watched as PartialObjectMetadata)."""

    metadata: ObjectMeta = ObjectMeta()


Object: TypeAlias = Pod | Service | Metadata

KIND_TYPES: Final[dict[str, type[Object]]] = {
    "Pod": Pod,
    "Service": Service,
    "Namespace": Metadata,
    "Deployment": Metadata,
    "ReplicaSet": Metadata,
    "DaemonSet": Metadata,
    "ReplicationController": Metadata,
}

_decoders: dict[type[Object], msgspec.json.Decoder[Object]] = {
    t: msgspec.json.Decoder(t) for t in (Pod, Service, Metadata)
}


def decode(kind: str, data: bytes) -> Object:
    """Decode one Kubernetes object of ``kind`` from JSON bytes, keeping only what we use."""
    return intern_strings(_decoders[KIND_TYPES[kind]].decode(data))


class SharedValues(Generic[Value]):
    """One copy of equal immutable values (as ``sys.intern`` for strings). Sharing only saves
    memory, so the table simply starts afresh when it holds ``held`` values: that bounds it,
    and what holders already share stays shared."""

    def __init__(self, held: int = 100_000) -> None:
        self.held = held
        self.values: dict[Value, Value] = {}

    def get(self, value: Value) -> Value:
        shared = self.values.setdefault(value, value)
        if len(self.values) >= self.held:
            self.values = {}
        return shared


# The pods of one owner carry equal ownerReferences (~300 B each when decoded per pod: the
# owner's kind, name and uid strings, the struct, the tuple), and the pods of a node equal
# specs: one copy each (bench/memory.py).
_owner_references: SharedValues[tuple[OwnerReference, ...]] = SharedValues()
_pod_specs: SharedValues[PodSpec] = SharedValues()


def intern_strings(obj: Object) -> Object:
    """Intern the strings repeated across many objects (namespaces, node names, label keys)."""
    meta = obj.metadata
    meta_changes: dict[str, object] = {"namespace": sys.intern(meta.namespace)}
    if meta.ownerReferences:
        meta_changes["ownerReferences"] = _owner_references.get(meta.ownerReferences)
    meta_changes["labels"] = (
        {sys.intern(k): sys.intern(v) for k, v in meta.labels.items()} if meta.labels else None
    )
    new_meta = msgspec.structs.replace(meta, **meta_changes)
    if isinstance(obj, Pod):
        return msgspec.structs.replace(
            obj,
            metadata=new_meta,
            spec=_pod_specs.get(PodSpec(nodeName=sys.intern(obj.spec.nodeName))),
        )
    return msgspec.structs.replace(obj, metadata=new_meta)


def same_content(old: Object, new: Object) -> bool:
    """Whether two versions of one object differ in nothing the reducer uses.

    Only resourceVersion is ignored; name, namespace, uid and generateName are compared too
    although the API server keeps them immutable for one uid.
    """
    a, b = old.metadata, new.metadata
    if not (
        a.labels == b.labels
        and a.ownerReferences == b.ownerReferences
        and a.name == b.name
        and a.namespace == b.namespace
        and a.uid == b.uid
        and a.generateName == b.generateName
    ):
        return False
    if isinstance(old, Pod):
        return isinstance(new, Pod) and old.spec == new.spec and old.status == new.status
    if isinstance(old, Service):
        return isinstance(new, Service) and old.spec == new.spec
    return type(old) is type(new)
