"""Lists: selectors, resourceVersion semantics and pagination over consistent snapshots.

A paginated list is a snapshot taken at its first page: later pages (``continue`` tokens) read
the same snapshot, as the real server reads etcd at one revision. The store keeps the last 64
snapshots; an older token is 410 Expired.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import msgspec

from metacollector.emulator.routing import Form, Route
from metacollector.emulator.selectors import SelectorError, object_filter
from metacollector.emulator.status import HTTPError
from metacollector.emulator.store import Obj, Store, Stored, partial
from metacollector.emulator.tables import encode_table

_encode = msgspec.json.Encoder().encode
Predicate = Callable[[Obj], bool]
SNAPSHOTS_KEPT = 64


def request_filter(route: Route, query: dict[str, str]) -> Predicate | None:
    """The objects a list or watch request selects (namespace, label and field selectors)."""
    try:
        predicate = object_filter(
            query.get("labelSelector"), query.get("fieldSelector"), route.plural
        )
    except SelectorError as exc:
        raise HTTPError(400, "BadRequest", str(exc)) from None
    if route.namespace:
        ns = route.namespace
        inner = predicate
        return lambda o: o["metadata"].get("namespace") == ns and (inner is None or inner(o))
    return predicate


def selected(store: Store, plural: str, predicate: Predicate | None) -> list[Stored]:
    return [s for s in store.items(plural) if predicate is None or predicate(s.obj)]


def list_objects(store: Store, route: Route, query: dict[str, str], form: Form) -> bytes:
    """One page of a list, in the form asked for."""
    limit = int(query.get("limit") or 0)
    predicate = request_filter(route, query)  # checked on every page, as the server does
    snapshot_rv, snap_id, offset, items = _source(store, route.plural, query, predicate)
    page = items[offset : offset + limit] if limit else items[offset:]
    next_offset = offset + len(page)
    meta: Obj = {"resourceVersion": str(snapshot_rv)}
    if limit and next_offset < len(items):
        if not snap_id:
            snap_id = f"{snapshot_rv}-{len(store.snapshots)}-{id(items)}"
            store.snapshots[snap_id] = (snapshot_rv, items)
            while len(store.snapshots) > SNAPSHOTS_KEPT:
                store.snapshots.pop(next(iter(store.snapshots)))
        meta["continue"] = base64.urlsafe_b64encode(
            json.dumps({"rv": snapshot_rv, "id": snap_id, "offset": next_offset}).encode()
        ).decode()
        meta["remainingItemCount"] = len(items) - next_offset
    elif snap_id:
        store.snapshots.pop(snap_id, None)
    return _encode_page(route, page, meta, form, query.get("includeObject", ""))


def _source(
    store: Store, plural: str, query: dict[str, str], predicate: Predicate | None
) -> tuple[int, str, int, list[Stored]]:
    """(snapshot resourceVersion, snapshot id or "", offset, items) the page is cut from: the
    continued snapshot, or the current objects after checking ``resourceVersion``."""
    cont = query.get("continue", "")
    if cont:
        try:
            token = json.loads(base64.urlsafe_b64decode(cont))
            snapshot_rv, snap_id, offset = token["rv"], token["id"], token["offset"]
        except (ValueError, KeyError, TypeError):
            raise HTTPError(400, "BadRequest", "invalid continue token") from None
        snap = store.snapshots.get(snap_id)
        if snap is None:
            raise HTTPError(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            )
        return snapshot_rv, snap_id, offset, snap[1]
    rv_param = query.get("resourceVersion", "")
    if query.get("resourceVersionMatch", "") == "Exact" and rv_param and int(rv_param) != store.rv:
        if int(rv_param) < store.compacted_rv:
            raise HTTPError(410, "Expired", f"Too large resource version: {rv_param}")
        raise HTTPError(
            410,
            "Expired",
            f"resourceVersion {rv_param} is not the current one (the emulator keeps no older snapshots)",
        )
    if rv_param not in ("", "0") and int(rv_param) > store.rv:
        raise HTTPError(
            504, "Timeout", f"Too large resource version: {rv_param}, current: {store.rv}"
        )
    return store.rv, "", 0, selected(store, plural, predicate)


def _encode_page(route: Route, page: list[Stored], meta: Obj, form: Form, include: str) -> bytes:
    if form is Form.TABLE:
        return encode_table(route.plural, (s.obj for s in page), meta, include)
    if form is Form.PARTIAL:
        head: Obj = {
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
        }
        body = b",".join(_encode(partial(s.obj, list_item=True)) for s in page)
    else:
        info = route.info
        head = {"kind": f"{info.kind}List", "apiVersion": info.api_version, "metadata": meta}
        body = b",".join(s.data for s in page)
    return _encode(head)[:-1] + b',"items":[' + body + b"]}"
