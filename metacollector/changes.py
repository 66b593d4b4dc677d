"""Cluster-wide object changes as the reducer sees them, for outputs that are not per node.

The CloudEvents sink consumes these: one per change of a watched object whose rendered event
changed (Create/Update) or that left the cluster (Delete).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    observed_at: float  # trio.current_time() / time.monotonic() when the reducer saw it
    version: str = ""  # the object's metadata.resourceVersion (for the CloudEvent id)
    cause_version: str = ""  # resourceVersion of the watch event that caused this change
    initial: bool = False  # caused by a reflector's first list (the object already existed)
