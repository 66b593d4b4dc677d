"""The emulator's admin side: injected faults, served-traffic statistics, and the ``/admin/``
endpoints that set the one and read the other (and compact, restart, drop connections, rotate
tokens, start the in-process churn). Admin requests are never subject to the faults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import msgspec

from metacollector.emulator.routing import json_body
from metacollector.emulator.status import HTTPError
from metacollector.emulator.transport import Reply, Request

if TYPE_CHECKING:
    from metacollector.emulator.server import Emulator

_encode = msgspec.json.Encoder().encode
_OK = Reply(200, b"{}")


@dataclass
class Faults:
    """Injected misbehaviour; counts are consumed as requests or watches use them."""

    drop_watch_after: int = 0  # close every watch connection after N events (0 = never)
    throttle_requests: int = 0  # answer the next N requests with 429
    retry_after: int = 1
    error_requests: int = 0  # answer the next N requests with 500
    malformed_lines: int = 0  # inject a garbage line before the next N watch events
    slow_write_delay: float = 0.0  # seconds to sleep before each watch write
    only_user_agent: str = ""  # when set, faults hit only clients whose User-Agent contains it
    outage: bool = False  # API outage: every non-admin request gets its connection dropped

    def target(self, request: Request) -> bool:
        """Whether the faults apply to this request's client."""
        return self.only_user_agent in request.headers.get("user-agent", "")


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)  # by verb and resource
    watches_opened: int = 0
    watches_open: int = 0
    bytes_served: int = 0
    list_bytes: int = 0
    watch_bytes: int = 0
    bytes_by_agent: dict[str, int] = field(default_factory=dict)  # by User-Agent product
    requests_by_agent: dict[str, int] = field(default_factory=dict)

    def count(self, key: str) -> None:
        self.requests[key] = self.requests.get(key, 0) + 1

    def served(self, request: Request, size: int) -> None:
        self.bytes_served += size
        agent = request.agent
        self.bytes_by_agent[agent] = self.bytes_by_agent.get(agent, 0) + size

    def reset(self) -> None:
        """Every counter back to zero; ``watches_open`` is a gauge of what is open, kept."""
        fresh = Stats(watches_open=self.watches_open)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


def handle(emulator: Emulator, request: Request) -> Reply:
    method, path = request.method, request.path
    if path == "/admin/stats" and method == "GET":
        stats = {
            **asdict(emulator.stats),
            "resourceVersion": emulator.store.rv,
            "faults": asdict(emulator.faults),
            "churn": asdict(emulator.churn) if emulator.churn else None,
        }
        return Reply(200, _encode(stats))
    if method != "POST":
        raise HTTPError(404, "NotFound", f"no admin endpoint {method} {path}")
    if path == "/admin/faults":
        faults = emulator.faults
        for key, value in json_body(request.body).items():
            if not hasattr(faults, key):
                raise HTTPError(400, "BadRequest", f"unknown fault {key!r}")
            setattr(faults, key, type(getattr(faults, key))(value))
        return Reply(200, _encode(asdict(faults)))
    if path == "/admin/churn":
        args = json_body(request.body)
        emulator.start_churn(
            float(args["rate"]),
            args.get("duration"),
            int(args.get("seed", 7)),
            stamp_label=args.get("stamp_label"),
        )
        return _OK
    if path == "/admin/compact":
        emulator.store.compact()
        return _OK
    if path == "/admin/restart":
        emulator.restart()
        return _OK
    if path == "/admin/drop-connections":
        emulator.transport.drop()  # (all clients: test tools reconnect too)
        return _OK
    if path == "/admin/tokens":
        emulator.tokens = set(json_body(request.body)["tokens"])
        return _OK
    if path == "/admin/reset-stats":
        emulator.stats.reset()
        return _OK
    raise HTTPError(404, "NotFound", f"no admin endpoint {method} {path}")
