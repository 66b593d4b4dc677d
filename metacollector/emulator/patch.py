"""JSON merge patch (RFC 7386), the common part of strategic merge patch, and JSON patch
(RFC 6902, ``kubectl patch --type=json``).

Strategic merge patch is what ``kubectl apply``, ``label`` and ``edit`` send for built-in kinds.
Implemented here: lists of objects merged by their merge key (containers by name, ports by port
number, ...), ``$patch: delete|replace``, ``$setElementOrder/``, ``$deleteFromPrimitiveList/``,
finalizers merged as a set; every other list is replaced, as the real server does for lists
without a merge strategy. The merge keys are looked up by field name, which for the kinds the
emulator serves gives the same answer as the real schema.
"""

from __future__ import annotations

import copy
from typing import Any

# field name -> merge key (ports: containerPort in containers, port in Services)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "topologySpreadConstraints": "topologyKey",
    "ports": "port",
}
MERGED_SETS = {"finalizers"}  # primitive lists with patchStrategy=merge


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key == "$patch" or key.startswith("$setElementOrder"):
            continue
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` applied; like merge_patch, copies only what the patch touches."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        directive, _, field = key.partition("/")
        if directive == "$setElementOrder":
            orders[field] = value
        elif directive == "$deleteFromPrimitiveList":
            out[field] = [v for v in out.get(field) or [] if v not in value]
        elif key.startswith("$"):
            continue  # $patch on a map that is merged, $retainKeys
        elif value is None:
            out.pop(key, None)
        elif isinstance(value, list) and key in MERGED_SETS:
            current = list(out.get(key) or [])
            out[key] = current + [v for v in value if v not in current]
        elif isinstance(value, list) and key in MERGE_KEYS:
            out[key] = _merge_list(out.get(key), value, _merge_key(key, value))
        else:
            out[key] = strategic_merge_patch(out.get(key), value)
    for field, order in orders.items():
        if isinstance(out.get(field), list):
            out[field] = _reorder(out[field], order)
    return out


def _merge_key(field: str, items: list[Any]) -> str:
    if field == "ports" and any(isinstance(i, dict) and "containerPort" in i for i in items):
        return "containerPort"
    return MERGE_KEYS[field]


def _merge_list(current: Any, patch: list[Any], key: str) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if not all(isinstance(i, dict) and key in i for i in patch):
        return copy.deepcopy(patch)  # not mergeable by key: replaced
    items = list(current) if isinstance(current, list) else []
    for change in patch:
        at = next(
            (n for n, c in enumerate(items) if isinstance(c, dict) and c.get(key) == change[key]),
            None,
        )
        if change.get("$patch") == "delete":
            if at is not None:
                del items[at]
        elif at is None:
            items.append(strategic_merge_patch({}, change))
        else:
            items[at] = strategic_merge_patch(items[at], change)
    return items


def _reorder(items: list[Any], order: list[Any]) -> list[Any]:
    """``items`` in the order ``$setElementOrder`` gives; items it does not name keep their
    relative order after those it names."""

    def rank(item: Any) -> int:
        for n, wanted in enumerate(order):
            if item == wanted or (
                isinstance(item, dict)
                and isinstance(wanted, dict)
                and all(item.get(k) == v for k, v in wanted.items())
            ):
                return n
        return len(order)

    return sorted(items, key=rank)


class JSONPatchError(ValueError):
    """A JSON patch operation that cannot be applied (bad op, missing path, failed test)."""


def json_patch(target: Any, operations: Any) -> Any:
    """``target`` with the RFC 6902 ``operations`` applied (on a deep copy: the stored object is
    never mutated). Raises JSONPatchError."""
    if not isinstance(operations, list):
        raise JSONPatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise JSONPatchError(f"invalid operation {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind == "test":
            if _get_pointer(doc, path) != op.get("value"):
                raise JSONPatchError(f"test failed at {path}")
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("add", "replace"):
            if kind == "replace":
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise JSONPatchError(f"{kind} needs a from pointer")
            value = copy.deepcopy(_get_pointer(doc, source))
            if kind == "move":
                _remove(doc, source)
            doc = _add(doc, path, value)
        else:
            raise JSONPatchError(f"unknown operation {kind!r}")
    return doc


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise JSONPatchError(f"invalid pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _step(node: Any, token: str, pointer: str) -> Any:
    if isinstance(node, dict) and token in node:
        return node[token]
    if isinstance(node, list) and token.isdigit() and int(token) < len(node):
        return node[int(token)]
    raise JSONPatchError(f"no such path {pointer}")


def _get_pointer(doc: Any, pointer: str) -> Any:
    for token in _tokens(pointer):
        doc = _step(doc, token, pointer)
    return doc


def _parent(doc: Any, pointer: str) -> tuple[Any, str]:
    tokens = _tokens(pointer)
    if not tokens:
        raise JSONPatchError("the whole document cannot be removed")
    node = doc
    for token in tokens[:-1]:
        node = _step(node, token, pointer)
    return node, tokens[-1]


def _add(doc: Any, pointer: str, value: Any) -> Any:
    if pointer == "":
        return value
    parent, last = _parent(doc, pointer)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and last == "-":
        parent.append(value)
    elif isinstance(parent, list) and last.isdigit() and int(last) <= len(parent):
        parent.insert(int(last), value)
    else:
        raise JSONPatchError(f"no such path {pointer}")
    return doc


def _remove(doc: Any, pointer: str) -> None:
    parent, last = _parent(doc, pointer)
    _step(parent, last, pointer)  # it must exist
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
