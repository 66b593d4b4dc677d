"""Request routing: a REST path to the resource, namespace, name and subresource it names."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from metacollector.emulator.status import HTTPError
from metacollector.emulator.store import GROUP_VERSIONS, RESOURCES, Obj, ResourceInfo

_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Route:
    plural: str
    namespace: str
    name: str
    subresource: str

    @property
    def info(self) -> ResourceInfo:
        return RESOURCES[self.plural]


class Form(enum.Enum):
    """How objects are returned, by the request's Accept header."""

    FULL = "full"
    PARTIAL = "PartialObjectMetadata"  # metadata only (as=PartialObjectMetadata[List])
    TABLE = "Table"  # server-side printing (as=Table), what kubectl get asks for

    @classmethod
    def of(cls, accept: str) -> Form:
        # kubectl lists Table first and plain JSON as fallback: the first form named wins
        for media in accept.split(","):
            if "as=Table" in media and "g=meta.k8s.io" in media:
                return cls.TABLE
            if "as=PartialObjectMetadata" in media:
                return cls.PARTIAL
        return cls.FULL


def parse_path(path: str) -> Route | None:
    """``/api/v1/...`` or ``/apis/GROUP/VERSION/...`` of a served resource, else None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif (
        len(parts) >= 3
        and parts[0] == "apis"
        and parts[1]
        and GROUP_VERSIONS.get(parts[1]) == parts[2]
    ):
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in RESOURCES:
        namespace, rest = rest[1], rest[2:]
    if not rest or rest[0] not in RESOURCES:
        return None
    info = RESOURCES[rest[0]]
    if info.group != group or (namespace and not info.namespaced):
        return None
    return Route(
        rest[0], namespace, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
    )


def json_body(body: bytes) -> Obj:
    """A request body that must be one JSON object (400 otherwise, as the real server)."""
    try:
        obj = _decode(body)
    except ValueError:  # msgspec.DecodeError is a ValueError
        raise HTTPError(400, "BadRequest", "request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise HTTPError(400, "BadRequest", "request body must be a JSON object")
    return obj
