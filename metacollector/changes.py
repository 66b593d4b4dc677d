"""Cluster-wide object changes, for outputs that are not per node.

The CloudEvents sink consumes these: one per change of a watched object whose rendered event
changed (Create/Update) or that left the cluster (Delete). The hub builds them from the
reducer's ``Edit``s (``object_change``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metacollector.model import Object, Pod
from metacollector.render import render_meta, render_status

Reason = Literal["Create", "Update", "Delete"]


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One change of one object, carrying the same content a Falco subscriber receives."""

    reason: Reason
    kind: str  # one of the seven kinds, e.g. "Pod", "ReplicationController"
    uid: str
    namespace: str  # "" for cluster-scoped kinds
    name: str
    node: str  # pods: spec.nodeName ("" while unscheduled); other kinds: ""
    meta: bytes  # compact JSON of SPEC section 1 (the wire `meta` string, UTF-8)
    status: bytes | None  # pods only: {"podIP":...} or {}
    refs: dict[str, list[str]] | None  # pods only: kind -> UIDs
    observed_at: float  # trio.current_time() / time.monotonic() when the hub saw it
    version: str = ""  # the object's metadata.resourceVersion (for the CloudEvent id)
    cause_version: str = ""  # resourceVersion of the watch event that caused this change
    initial: bool = False  # caused by a reflector's first list (the object already existed)


def object_change(
    reason: Reason,
    kind: str,
    obj: Object,
    refs: dict[str, list[str]] | None,
    now: float,
    cause_version: str = "",
    initial: bool = False,
) -> ObjectChange:
    """The ObjectChange of ``obj`` (the new version, or the last one for a Delete), caused by
    the watch event of resourceVersion ``cause_version`` (of a first list: ``initial``)."""
    meta = obj.metadata
    status = render_status(obj) if isinstance(obj, Pod) and reason != "Delete" else None
    return ObjectChange(
        reason=reason,
        kind=kind,
        uid=meta.uid,
        namespace=meta.namespace,
        name=meta.name,
        node=obj.spec.nodeName if isinstance(obj, Pod) else "",
        meta=render_meta(kind, obj),
        status=status,
        refs=refs,
        observed_at=now,
        version=meta.resourceVersion,
        cause_version=cause_version,
        initial=initial,
    )
