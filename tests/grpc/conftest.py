"""The transport tests' server fixture (the server itself: tests/support/grpc_server.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.support.grpc_server import Served, start_server


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[Served]:
    s = await start_server(nursery)
    yield s
    s.cancel()
