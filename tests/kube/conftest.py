"""Fixtures for the Kubernetes access tests: an in-process emulator (exec plugin scripts are in
tests/support/kube.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from metacollector.emulator.inprocess import EmulatorHandle, running_emulator


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    """A small cluster; faults hit only the reflector (User-Agent metacollector), not the
    test's own requests."""
    async with running_emulator(nodes=3, pods_per_node=5, bookmark_interval=0.2) as handle:
        await handle.set_faults(only_user_agent="metacollector")
        yield handle
