"""Exec credential plugins and a mocked API server for the Kubernetes access tests."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from metacollector.emulator.inprocess import EmulatorHandle
from metacollector.kube.reflector import Backoff, Delta, Reflector
from metacollector.kube.resources import RESOURCES
from metacollector.model import KIND_TYPES

NAMESPACES = next(r for r in RESOURCES if r.kind == "Namespace")


async def first_synced_batch(
    serve: Callable[[httpx.Request], httpx.Response], **options: Any
) -> tuple[Reflector[Any], Sequence[Delta]]:
    """Run a namespaces reflector (fast backoff, ``options`` added) against ``serve``, an
    httpx MockTransport handler, until it has synced; the reflector and its first batch."""
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
            **options,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reflector.run)
            with trio.fail_after(10):
                await reflector.synced.wait()
                batch = await receive.receive()
            nursery.cancel_scope.cancel()
    return reflector, batch


def counting_plugin(tmp_path: Path, token_file: Path, fail_first: int = 0) -> tuple[Path, Path]:
    """An exec credential plugin (v1) that prints the token in ``token_file`` with an expiry an
    hour away, appends a line to a counter file on every run, and exits 1 on its first
    ``fail_first`` runs. Returns (script, counter file)."""
    runs = tmp_path / "plugin-runs"
    script = tmp_path / "counting_plugin.py"
    status = f"{{'token': open({str(token_file)!r}).read().strip(), 'expirationTimestamp': exp}}"
    script.write_text(
        "import datetime, json, sys\n"
        f"with open({str(runs)!r}, 'a') as f:\n"
        "    f.write('run\\n')\n"
        f"if len(open({str(runs)!r}).read().splitlines()) <= {fail_first}:\n"
        "    sys.exit('plugin: not yet')\n"
        "exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))"
        ".strftime('%Y-%m-%dT%H:%M:%SZ')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        f"'kind': 'ExecCredential', 'status': {status}}}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, runs


def exec_kubeconfig(emu: EmulatorHandle, tmp_path: Path, script: Path) -> Path:
    """The emulator's kubeconfig with its static token replaced by the exec plugin."""
    text = emu.kubeconfig.read_text().replace(
        f"    token: {emu.token}\n",
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
        f"      command: {sys.executable}\n      args: [{json.dumps(str(script))}]\n",
    )
    assert "exec:" in text
    path = tmp_path / "exec-kubeconfig"
    path.write_text(text)
    return path
