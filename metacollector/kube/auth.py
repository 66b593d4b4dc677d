"""httpx authentication for the API server: static token, token file, exec credential plugin.

Token files (service account tokens rotate) are re-read at least every ``reread_interval`` and
after a 401; exec plugins are re-run when their credential expires and after a 401.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator
from datetime import datetime
from pathlib import Path

import httpx
import trio

from metacollector.kube.config import AuthSpec, KubeConfigError


class CredentialError(Exception):
    """An exec plugin failed or returned something unusable."""


class KubeAuth(httpx.Auth):
    def __init__(self, spec: AuthSpec) -> None:
        self.spec = spec
        self._token = spec.token
        self._expires_at = 0.0  # time.time(); 0 = needs loading (file/exec)
        self._generation = 0  # bumped by each refresh
        self._lock = trio.Lock()  # seven reflectors share one client: run a plugin once

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.spec.kind == "none":
            yield request
            return
        if self.spec.kind != "token" and time.time() >= self._expires_at:
            await self._refresh_once(self._generation)
        generation = self._generation
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401 and self.spec.kind != "token":
            await self._refresh_once(generation)
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request

    async def _refresh_once(self, seen: int) -> None:
        """Refresh unless another request already did since generation ``seen``."""
        async with self._lock:
            if self._generation == seen:
                await self.refresh()

    async def refresh(self) -> None:
        """Re-read the token file or re-run the exec plugin now."""
        if self.spec.kind == "token_file":
            try:
                self._token = Path(self.spec.token_file).read_text().strip()
            except OSError as exc:
                raise KubeConfigError(
                    f"tokenFile {self.spec.token_file}: cannot read: {exc.strerror}"
                ) from None
            self._expires_at = time.time() + self.spec.reread_interval
        elif self.spec.kind == "exec":
            self._token, self._expires_at = await run_exec_plugin(self.spec)
        self._generation += 1


async def run_exec_plugin(spec: AuthSpec) -> tuple[str, float]:
    """Run the exec credential plugin; return (token, expiry as time.time())."""
    assert spec.exec is not None
    ex = spec.exec
    env = {**os.environ, **dict(ex.env)}
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": ex.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        proc = await trio.run_process(
            [ex.command, *ex.args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=ex.base_dir,
        )
    except OSError as exc:
        raise CredentialError(f"exec plugin {ex.command!r}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[:300]
        raise CredentialError(f"exec plugin {ex.command!r} exited {proc.returncode}: {err}")
    try:
        cred = json.loads(proc.stdout)
        status = cred["status"]
        token = status["token"]
    except (ValueError, KeyError, TypeError):
        raise CredentialError(
            f"exec plugin {ex.command!r}: output is not an ExecCredential with status.token"
        ) from None
    if cred.get("apiVersion") not in (None, ex.api_version):
        raise CredentialError(
            f"exec plugin {ex.command!r}: apiVersion {cred.get('apiVersion')!r}, "
            f"expected {ex.api_version!r}"
        )
    expiry = status.get("expirationTimestamp")
    expires_at = float("inf")
    if expiry:
        try:
            expires_at = datetime.fromisoformat(expiry.replace("Z", "+00:00")).timestamp() - 10
        except ValueError:
            raise CredentialError(
                f"exec plugin {ex.command!r}: bad expirationTimestamp {expiry!r}"
            ) from None
    return str(token), expires_at
