"""A real CloudEvents HTTP receiver (hypercorn on trio) that parses every request with the SDK:
the sink's counterpart in the CloudEvents and chaos tests and in bench/cloudevents_delivery.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from hypercorn.config import Config
from hypercorn.trio import serve


@dataclass
class Receiver:
    up: bool = True
    delay: float = 0.0
    respond: Callable[[BaseCloudEvent], tuple[int, dict[str, str]]] | None = None
    events: list[BaseCloudEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # trio.current_time() of each event
    requests: list[dict[str, str]] = field(default_factory=list)  # headers of every request
    final: dict[str, Any] = field(default_factory=dict)  # uid -> data, or "deleted"
    port: int = 0
    token: str | None = None  # when set, requests must carry "Authorization: Bearer <token>"
    in_flight: int = 0
    max_in_flight: int = 0
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the sender died mid-request
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append(headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await trio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        status, extra = 503, dict[str, str]()
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            status = 401
        elif self.up:
            event = from_http(HTTPMessage(headers=headers, body=body), JSONFormat())
            status, extra = self.respond(event) if self.respond else (202, {})
            if 200 <= status < 300:
                self.events.append(event)
                self.times.append(trio.current_time())
                data = data_of(event)
                self.final[data["uid"]] = "deleted" if data["reason"] == "Delete" else data
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def data_of(event: BaseCloudEvent) -> dict[str, Any]:
    data = event.get_data()
    return json.loads(data) if isinstance(data, bytes | str) else data  # type: ignore[return-value]


async def start_receiver(
    nursery: trio.Nursery, tls: tuple[str, str] | None = None, **kwargs: Any
) -> Receiver:
    """``tls``: (certificate file, key file) to serve https."""
    receiver = Receiver(**kwargs)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    if tls is not None:
        config.certfile, config.keyfile = tls
        receiver.scheme = "https"
    config.accesslog = None
    app: Any = receiver.app  # an ASGI app; hypercorn's own type for one is narrower
    binds = await nursery.start(partial(serve, app, config, mode="asgi"))
    receiver.port = int(binds[0].rsplit(":", 1)[1])
    return receiver
