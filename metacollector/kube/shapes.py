"""Shapes a real API server never sends: refused before anything is stored or served.

An object without ``metadata.uid`` would be served as ``uid: ""`` and two of them would
overwrite each other; one without a name or (namespaced) namespace, or a Service arriving in
the pods watch, would be served as something it is not. Such objects are refused one by one,
with a reason (the ``reason`` label of ``metacollector_objects_refused``); the valid objects
around them go on. Pure: no I/O, no state.

The ``kind`` is checked without keeping it: objects are decoded as a subclass of their model
type with one more field, ``kind``, and handed on as the model type itself (``plain``), so the
state holds no extra string per object. Lists usually omit the kind of their items; an absent
kind is accepted.
"""

from __future__ import annotations

import enum
from typing import Protocol, TypeVar, cast

import msgspec

from metacollector.kube.resources import Resource
from metacollector.model import CLUSTER_SCOPED

PARTIAL = "PartialObjectMetadata"


class Reason(enum.StrEnum):
    NO_OBJECT = "no_object"  # an ADDED/MODIFIED/DELETED event without an object
    NOT_AN_OBJECT = "not_an_object"  # a list item or event object that is not a JSON object
    WRONG_TYPE = "wrong_type"  # a JSON object whose fields have the wrong types
    WRONG_KIND = "wrong_kind"  # e.g. a Service in the pods watch
    NO_UID = "no_uid"
    NO_NAME = "no_name"
    NO_NAMESPACE = "no_namespace"  # a namespaced object without its namespace
    NO_RESOURCE_VERSION = "no_resource_version"
    BOOKMARK_WITHOUT_RV = "bookmark_without_rv"


class _Meta(Protocol):
    @property
    def uid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def resourceVersion(self) -> str: ...


class _Object(Protocol):
    @property
    def metadata(self) -> _Meta: ...


S = TypeVar("S", bound=msgspec.Struct)


def checked_type(item_type: type[S]) -> type[S]:
    """``item_type`` with a ``kind`` field, to decode objects whose kind is then checked (a
    subclass of ``item_type``, read with ``kind_of``)."""
    checked = msgspec.defstruct(
        f"Checked{item_type.__name__}",
        [("kind", str, "")],
        bases=(item_type,),
        frozen=True,
        gc=False,
    )
    return cast("type[S]", checked)


def kind_of(checked: object) -> str:
    """The ``kind`` an object decoded as a ``checked_type`` carried ("" when absent)."""
    kind = getattr(checked, "kind", "")
    return kind if isinstance(kind, str) else ""


def plain(item_type: type[S], checked: S) -> S:
    """The model object of a decoded ``checked_type(item_type)`` (its fields minus ``kind``,
    which comes last)."""
    return item_type(*msgspec.structs.astuple(checked)[:-1])


def accepted_kinds(resource: Resource) -> frozenset[str]:
    """The kinds an object of ``resource`` may carry: none (list items), its own, and for
    metadata-only watches PartialObjectMetadata (or the full kind, a server's fallback)."""
    kinds = {"", resource.kind}
    if resource.metadata_only:
        kinds.add(PARTIAL)
    return frozenset(kinds)


def undecodable(raw: bytes) -> Reason | None:
    """Why an object failed to decode: not a JSON object at all, or fields of the wrong type;
    None for invalid UTF-8, corrupt bytes rather than a shape (fetched again, not refused)."""
    try:
        raw.decode()
    except UnicodeDecodeError:
        return None
    return Reason.WRONG_TYPE if raw.lstrip()[:1] == b"{" else Reason.NOT_AN_OBJECT


def refusal(resource: Resource, kinds: frozenset[str], kind: str, obj: _Object) -> Reason | None:
    """Why ``obj`` (of declared ``kind``) is not an object of ``resource`` as an API server
    sends it; None when it is."""
    if kind not in kinds:
        return Reason.WRONG_KIND
    meta = obj.metadata
    if not meta.uid:
        return Reason.NO_UID
    if not meta.name:
        return Reason.NO_NAME
    if not meta.namespace and resource.kind not in CLUSTER_SCOPED:
        return Reason.NO_NAMESPACE
    if not meta.resourceVersion:
        return Reason.NO_RESOURCE_VERSION
    return None
