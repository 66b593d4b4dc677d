"""Label and field selectors (the subset of the real grammar clients use)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]


class SelectorError(ValueError):
    pass


_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


Labels = Mapping[str, str]


def _in(k: str, values: set[str]) -> Callable[[Labels], bool]:
    return lambda labels: labels.get(k) in values


def _not_in(k: str, values: set[str]) -> Callable[[Labels], bool]:
    return lambda labels: labels.get(k) not in values


def _exists(k: str, present: bool) -> Callable[[Labels], bool]:
    return lambda labels: (k in labels) == present


def label_selector(selector: str) -> Callable[[Labels], bool]:
    """Parse =, ==, !=, in, notin, exists and !exists requirements (ANDed)."""
    tests: list[Callable[[Labels], bool]] = []
    for req in _split(selector):
        if m := _SET_RE.match(req):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            tests.append(_in(key, values) if op == "in" else _not_in(key, values))
        elif "!=" in req:
            key, value = (s.strip() for s in req.split("!=", 1))
            tests.append(_not_in(key, {value}))
        elif "=" in req:
            key, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
            tests.append(_in(key, {value}))
        elif req.startswith("!"):
            tests.append(_exists(req[1:].strip(), False))
        elif re.fullmatch(r"[A-Za-z0-9_./-]+", req):
            tests.append(_exists(req, True))
        else:
            raise SelectorError(f"unable to parse requirement: {req!r}")
    return lambda labels: all(t(labels) for t in tests)


FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
    "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
}


def _field_test(getter: Callable[[Mapping[str, Any]], str], value: str, negate: bool) -> Predicate:
    return lambda obj: (getter(obj) == value) != negate


def field_selector(selector: str, plural: str) -> Predicate:
    tests: list[Predicate] = []
    for req in _split(selector):
        negate = "!=" in req
        key, value = (s.strip() for s in req.replace("==", "=").replace("!=", "=").split("=", 1))
        getter = FIELDS.get(key)
        if getter is None or (key == "spec.nodeName" and plural != "pods"):
            raise SelectorError(f"field label not supported: {key}")
        tests.append(_field_test(getter, value, negate))
    return lambda obj: all(t(obj) for t in tests)


def object_filter(label: str | None, field: str | None, plural: str) -> Predicate | None:
    """One predicate over a whole object for both selectors; None when there is none."""
    if not label and not field:
        return None
    by_label = label_selector(label) if label else None
    by_field = field_selector(field, plural) if field else None

    def test(obj: Mapping[str, Any]) -> bool:
        if by_field is not None and not by_field(obj):
            return False
        return by_label is None or by_label(obj.get("metadata", {}).get("labels") or {})

    return test
