"""Exec credential plugins for the Kubernetes access tests."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

from metacollector.emulator.inprocess import EmulatorHandle


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
