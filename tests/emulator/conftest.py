"""An API server to test: the in-process emulator, or a real one named by
METACOLLECTOR_TEST_KUBECONFIG (then emulator-only features are skipped with a reason)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from metacollector.emulator.inprocess import running_emulator
from metacollector.kube.client import make_client
from metacollector.kube.config import load_kubeconfig
from tests.support.emulator_api import Api
from tests.support.env import REAL_KUBECONFIG


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    if REAL_KUBECONFIG:
        async with make_client(load_kubeconfig(REAL_KUBECONFIG)) as client:
            yield Api(client, None)
        return
    async with (
        running_emulator(nodes=2, pods_per_node=3, bookmark_interval=0.2, history_size=200) as emu,
        emu.client() as client,
    ):
        yield Api(client, emu)
