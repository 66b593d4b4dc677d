"""``start_env`` as a context manager that always resumes it to its end: a failing test then
reports its own assertion, not trio's "Nursery stack corrupted" from a generator left open."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from metacollector.settings import Settings
from tests.e2e.conftest import Env, start_env


@asynccontextmanager
async def environment(
    nursery: trio.Nursery, settings: Settings | None = None, **emulator_opts: Any
) -> AsyncIterator[Env]:
    steps = start_env(nursery, settings, **emulator_opts)
    env = await steps.__anext__()
    try:
        yield env
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await steps.__anext__()
