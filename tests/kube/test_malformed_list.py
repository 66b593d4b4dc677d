"""A list page that is not a list (invalid UTF-8, broken JSON) is retried after a backoff; it
never ends the reflector. Served by an in-process httpx transport: the emulator only ever sends
well-formed pages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
import trio

from metacollector.kube.reflector import Backoff, Delta, Reflector
from metacollector.kube.resources import RESOURCES
from metacollector.model import KIND_TYPES

NAMESPACES = next(r for r in RESOURCES if r.kind == "Namespace")
GOOD_PAGE = json.dumps(
    {
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "7"},
        "items": [{"metadata": {"name": "shop", "uid": "ns1", "resourceVersion": "5"}}],
    }
).encode()
BAD_PAGES = [
    b'{"metadata":{"resourceVersion":"7"},"items":[{"metadata":{"name":"\x80"}}]}',  # UTF-8
    b'{"metadata":{"resourceVersion":"7"},"items":[',  # truncated JSON
]


async def test_malformed_list_pages_are_retried_until_a_good_one() -> None:
    pages = [*BAD_PAGES, GOOD_PAGE]
    lists = 0

    def serve(request: httpx.Request) -> httpx.Response:
        nonlocal lists
        if request.url.params.get("watch") == "true":
            return httpx.Response(200, content=b"")  # an empty watch that ends at once
        lists += 1
        return httpx.Response(200, content=pages[min(lists, len(pages)) - 1])

    send, receive = trio.open_memory_channel[Sequence[Delta]](100)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(serve), base_url="http://api"
    ) as client:
        reflector: Reflector[Any] = Reflector(
            client,
            NAMESPACES,
            KIND_TYPES["Namespace"],
            send,
            backoff=Backoff(initial=0.01, maximum=0.02, jitter=0),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reflector.run)
            with trio.fail_after(10):
                await reflector.synced.wait()
                batch = await receive.receive()
            nursery.cancel_scope.cancel()
    assert lists >= 3  # two malformed pages, each retried (the empty watch may relist again)
    assert [(d.type, d.obj.metadata.uid) for d in batch] == [("ADDED", "ns1")]
    assert reflector.rv == "7"
