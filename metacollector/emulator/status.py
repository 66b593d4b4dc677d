"""API errors as the real server shapes them: ``kind: Status`` bodies with reason, code and,
for errors about one object, ``details`` naming it (group, resource as ``kind``, name)."""

from __future__ import annotations

import msgspec

from metacollector.emulator.store import ResourceInfo

_encode = msgspec.json.Encoder().encode


class HTTPError(Exception):
    """An error answered with a Status body (and, for some, extra headers such as Retry-After)."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.headers = headers or []
        self.details = details

    def body(self) -> bytes:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(
    code: int, reason: str, message: str, details: dict[str, str] | None = None
) -> bytes:
    status: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        status["details"] = details
    status["code"] = code
    return _encode(status)


def _about(info: ResourceInfo, name: str) -> tuple[str, dict[str, str]]:
    """The resource as the server names it in messages (``leases.coordination.k8s.io``) and the
    ``details`` of a Status about one of its objects."""
    qualified = f"{info.plural}.{info.group}" if info.group else info.plural
    details = {"name": name, "kind": info.plural}
    if info.group:
        details = {"name": name, "group": info.group, "kind": info.plural}
    return qualified, details


def not_found(info: ResourceInfo, name: str) -> HTTPError:
    qualified, details = _about(info, name)
    return HTTPError(404, "NotFound", f'{qualified} "{name}" not found', details=details)


def already_exists(info: ResourceInfo, name: str) -> HTTPError:
    qualified, details = _about(info, name)
    return HTTPError(409, "AlreadyExists", f'{qualified} "{name}" already exists', details=details)


def conflict(info: ResourceInfo, name: str) -> HTTPError:
    qualified, details = _about(info, name)
    return HTTPError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; please apply your changes to the latest version and try again',
        details=details,
    )
