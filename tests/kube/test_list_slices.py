"""A large list never holds the event loop in one piece: the reflector makes model objects of a
page, and compares a whole list with its store, a bounded number at a time with a checkpoint
in between (counted per task step, not timed). Served by an in-process httpx transport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from metacollector.kube import reflector as reflector_module
from metacollector.kube.reflector import ACCEPT_SLICE, REPLACE_SLICE, Delta, Reflector
from tests.support.kube import first_synced_batch
from tests.support.steps import MostPerStep

OBJECTS = 3 * REPLACE_SLICE


async def test_a_large_list_is_made_and_compared_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    page = json.dumps(
        {
            "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": "7"},
            "items": [
                {"metadata": {"name": f"ns{i}", "uid": f"uid{i}", "resourceVersion": "5"}}
                for i in range(OBJECTS)
            ],
        }
    ).encode()

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            return httpx.Response(500)  # the reflector backs off (a watch returning at once spins)
        return httpx.Response(200, content=page)

    counts = {"accepted": 0, "compared": 0}
    accept = Reflector._accept

    def counted_accept(self: Reflector[Any], checked: Any) -> Any:
        counts["accepted"] += 1
        return accept(self, checked)

    def counted_delta(*args: Any, **kwargs: Any) -> Delta:
        counts["compared"] += 1  # every object of a first list is ADDED: one Delta each
        return Delta(*args, **kwargs)

    monkeypatch.setattr(Reflector, "_accept", counted_accept)
    monkeypatch.setattr(reflector_module, "Delta", counted_delta)
    steps = MostPerStep(counts)
    trio.lowlevel.add_instrument(steps)
    try:
        _reflector, batch = await first_synced_batch(serve, page_size=OBJECTS, streaming_list=False)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert counts["accepted"] >= OBJECTS and counts["compared"] >= OBJECTS
    assert len(batch) == REPLACE_SLICE  # handed on in slices too
    assert steps.most == {"accepted": ACCEPT_SLICE, "compared": REPLACE_SLICE}
