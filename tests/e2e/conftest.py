"""End-to-end fixtures: every scenario over plaintext h2c, TLS and mutual TLS (the environment
itself is tests/support/env.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trustme

from tests.support.env import Env, client_credentials, start_env, tls_settings


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=["plaintext", "tls", "mtls"])
async def env(
    request: pytest.FixtureRequest, nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> AsyncIterator[Env]:
    """Every end-to-end scenario runs over plaintext h2c, TLS and mutual TLS."""
    transport = request.param
    settings = None if transport == "plaintext" else tls_settings(ca, tmp_path, transport == "mtls")
    async for e in start_env(nursery, settings):
        if transport != "plaintext":
            e.grpc_credentials = client_credentials(
                ca, "falco-sensor" if transport == "mtls" else None
            )
            e.target_host = "localhost"
        await e.ready()
        yield e
