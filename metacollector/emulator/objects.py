"""REST verbs on one stored object, for every served kind: get, create (POST), replace (PUT,
optimistic concurrency on ``metadata.resourceVersion``), patch and delete.

What the real server checks before it writes is checked here (namespaces that exist, names that
match the URL, required names); what it answers is a Status built by ``status``: 404 NotFound,
409 AlreadyExists, 409 Conflict, all naming the object in ``details``.
"""

from __future__ import annotations

import msgspec

from metacollector.emulator import status
from metacollector.emulator.patch import (
    JSONPatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from metacollector.emulator.routing import Form, Route, json_body
from metacollector.emulator.status import HTTPError
from metacollector.emulator.store import (
    RESOURCES,
    AlreadyExists,
    Conflict,
    NotFound,
    Obj,
    Store,
    Stored,
    partial,
)
from metacollector.emulator.tables import encode_table

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def get(store: Store, route: Route) -> Stored:
    try:
        return store.get(route.plural, route.namespace, route.name)
    except NotFound:
        raise status.not_found(route.info, route.name) from None


def get_as(store: Store, route: Route, form: Form, include_object: str) -> bytes:
    """One object in the form asked for (whole, metadata only, or a one-row Table)."""
    stored = get(store, route)
    if form is Form.TABLE:
        meta = {"resourceVersion": str(stored.rv)}
        return encode_table(route.plural, [stored.obj], meta, include_object)
    return _encode(partial(stored.obj)) if form is Form.PARTIAL else stored.data


def create(store: Store, route: Route, body: bytes) -> bytes:
    info = route.info
    obj = json_body(body)
    meta = obj.setdefault("metadata", {})
    if info.namespaced:
        if meta.get("namespace") and route.namespace and meta["namespace"] != route.namespace:
            raise HTTPError(
                400,
                "BadRequest",
                "the namespace of the object does not match the namespace on the request",
            )
        meta["namespace"] = route.namespace or meta.get("namespace") or "default"
        if ("", meta["namespace"]) not in store.objects["namespaces"]:
            raise status.not_found(RESOURCES["namespaces"], meta["namespace"])
    if not meta.get("name") and not meta.get("generateName"):
        raise HTTPError(422, "Invalid", f"{info.kind} is invalid: metadata.name: Required value")
    try:
        return store.create(route.plural, obj).data
    except AlreadyExists:
        raise status.already_exists(info, meta["name"]) from None


def replace(store: Store, route: Route, body: bytes) -> bytes:
    obj = json_body(body)
    meta = obj.setdefault("metadata", {})
    if meta.get("name") and meta["name"] != route.name:
        raise HTTPError(
            400,
            "BadRequest",
            f"the name of the object ({meta['name']}) does not match the name on the URL ({route.name})",
        )
    meta["name"] = route.name
    if route.info.namespaced:
        meta["namespace"] = route.namespace
    return _update(store, route, obj)


def patch(store: Store, route: Route, content_type: str, body: bytes) -> bytes:
    if content_type not in (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH):
        raise HTTPError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type})",
        )
    current = get(store, route)
    if content_type == JSON_PATCH:
        try:
            patched = json_patch(current.obj, _decode_json(body))
        except JSONPatchError as exc:
            raise HTTPError(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from None
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise HTTPError(422, "Invalid", "the JSON patch does not leave an object")
    else:
        # the merge functions copy only what the patch touches and the stored object is never
        # mutated, so the patched object can share its other subtrees with it
        apply = strategic_merge_patch if content_type == STRATEGIC_MERGE_PATCH else merge_patch
        patched = apply(current.obj, json_body(body))
    patched["metadata"] = {**patched["metadata"], "resourceVersion": ""}
    return _update(store, route, patched)


def _decode_json(body: bytes) -> object:
    try:
        return _decode(body)
    except ValueError:  # msgspec.DecodeError is a ValueError
        raise HTTPError(400, "BadRequest", "request body is not valid JSON") from None


def delete(store: Store, route: Route) -> bytes:
    try:
        return store.delete(route.plural, route.namespace, route.name).data
    except NotFound:
        raise status.not_found(route.info, route.name) from None


def _update(store: Store, route: Route, obj: Obj) -> bytes:
    if route.subresource not in ("", "status") or (route.subresource and route.plural != "pods"):
        raise HTTPError(404, "NotFound", f"subresource {route.subresource} not found")
    try:
        return store.update(route.plural, obj, subresource=route.subresource).data
    except NotFound:
        raise status.not_found(route.info, route.name) from None
    except Conflict:
        raise status.conflict(route.info, route.name) from None
