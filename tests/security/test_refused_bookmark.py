"""A streaming list whose initial-events-end BOOKMARK has no resourceVersion is refused and
listed again: adopting it would resume the watch from nowhere. Served by an in-process httpx
transport (the emulator always sends a resourceVersion)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import trio

from metacollector import metrics
from metacollector.kube.reflector import INITIAL_EVENTS_END, Backoff, Delta, Reflector
from metacollector.kube.resources import RESOURCES
from metacollector.model import KIND_TYPES

NAMESPACES = next(r for r in RESOURCES if r.kind == "Namespace")
NS = {
    "kind": "PartialObjectMetadata",
    "metadata": {"name": "shop", "uid": "ns1", "resourceVersion": "5"},
}


async def quiet() -> AsyncIterator[bytes]:
    """A watch stream that sends nothing until cancelled."""
    await trio.sleep_forever()
    yield b""


def lines(end_rv: str) -> bytes:
    end = {
        "kind": "PartialObjectMetadata",
        "metadata": {"annotations": {INITIAL_EVENTS_END: "true"}},
    }
    if end_rv:
        end["metadata"]["resourceVersion"] = end_rv  # type: ignore[index]
    events = [{"type": "ADDED", "object": NS}, {"type": "BOOKMARK", "object": end}]
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


async def test_initial_events_end_without_rv_is_refused_and_listed_again() -> None:
    streams = 0

    def serve(request: httpx.Request) -> httpx.Response:
        nonlocal streams
        assert request.url.params.get("watch") == "1", "listed, not streamed"
        if request.url.params.get("sendInitialEvents") != "true":
            return httpx.Response(200, content=quiet())  # the watch after the list
        streams += 1
        return httpx.Response(200, content=lines("" if streams == 1 else "7"))

    refused = metrics.OBJECTS_REFUSED.labels("namespaces", "bookmark_without_rv")
    before = refused._value.get()
    send, receive = trio.open_memory_channel[Sequence[Delta]](100)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(serve), base_url="http://api"
    ) as client:
        reflector: Reflector[Any] = Reflector(
            client,
            NAMESPACES,
            KIND_TYPES["Namespace"],
            send,
            streaming_list=True,
            backoff=Backoff(initial=0.01, maximum=0.02, jitter=0),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reflector.run)
            with trio.fail_after(10):
                await reflector.synced.wait()
                batch = await receive.receive()
            nursery.cancel_scope.cancel()
    assert refused._value.get() == before + 1
    assert streams >= 2
    assert [(d.type, d.obj.metadata.uid) for d in batch] == [("ADDED", "ns1")]
    assert reflector.rv == "7"
