"""A list page that is not a list (invalid UTF-8, broken JSON) is retried after a backoff; it
never ends the reflector. Served by an in-process httpx transport: the emulator only ever sends
well-formed pages."""

from __future__ import annotations

import json

import httpx

from tests.support.kube import first_synced_batch

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

    reflector, batch = await first_synced_batch(serve)
    assert lists >= 3  # two malformed pages, each retried (the empty watch may relist again)
    assert [(d.type, d.obj.metadata.uid) for d in batch] == [("ADDED", "ns1")]
    assert reflector.rv == "7"
