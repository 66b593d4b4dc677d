"""`metacollector run` loads neither the emulator nor its extra dependencies (trustme and the
cryptography it pulls in), which the production image does not install; the commands that need
them say which extra to install when it is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("metacollector.emulator", "metacollector.demo", "trustme", "cryptography")


def loaded(script: str) -> list[str]:
    """The forbidden modules in ``sys.modules`` after ``script`` ran in a fresh interpreter."""
    probe = f"{script}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "metacollector.cli" in modules  # the probe itself ran
    return [m for m in modules if m.startswith(FORBIDDEN)]


def test_run_help_loads_no_emulator_module() -> None:
    script = (
        "import contextlib\nfrom metacollector.cli import main\n"
        "with contextlib.suppress(SystemExit):\n    main(['run', '--help'])"
    )
    assert loaded(script) == []


def test_importtime_of_run_help_lists_no_emulator_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "metacollector.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--kubeconfig" in proc.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "metacollector.settings" in imported  # the listing is of this run
    assert [m for m in imported if m.startswith(FORBIDDEN)] == []


def test_a_running_collector_loads_no_emulator_module(tmp_path: Path) -> None:
    """The serving path itself, until every reflector has failed against a closed port and
    retried (error paths included)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:9\n"
        "users:\n- name: u\n  user:\n    token: t\n"
        "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
    )
    argv = [
        "run",
        f"--kubeconfig={kubeconfig}",
        "--broker-bind-address=127.0.0.1:0",
        "--metrics-bind-address=127.0.0.1:0",
        "--health-probe-bind-address=127.0.0.1:0",
    ]
    script = f"""
import trio
from metacollector.cli import build_parser, settings_from_args
from metacollector.app import serve

async def main() -> None:
    settings = settings_from_args(build_parser().parse_args({argv!r}))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve, settings)
            while not all(r.watch_restarts for r in running.reflectors):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

trio.run(main)
"""
    assert loaded(script) == []


def test_emulator_commands_name_the_missing_extra() -> None:
    for argv in (["demo"], ["emulator", "--nodes", "1"]):
        script = (
            "import sys\nsys.modules['trustme'] = None  # as if not installed\n"
            f"from metacollector.cli import main\nsys.exit(main({argv!r}))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == (
            "metacollector: error: the emulator needs the module 'trustme': "
            "pip install 'metacollector[emulator]'"
        )
