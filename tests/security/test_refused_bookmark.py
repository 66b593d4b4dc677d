"""A streaming list whose initial-events-end BOOKMARK has no resourceVersion is refused and
listed again: adopting it would resume the watch from nowhere. Served by an in-process httpx
transport (the emulator always sends a resourceVersion)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import trio

from metacollector import metrics
from metacollector.kube.reflector import INITIAL_EVENTS_END
from tests.support.kube import first_synced_batch

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
    reflector, batch = await first_synced_batch(serve, streaming_list=True)
    assert refused._value.get() == before + 1
    assert streams >= 2
    assert [(d.type, d.obj.metadata.uid) for d in batch] == [("ADDED", "ns1")]
    assert reflector.rv == "7"
