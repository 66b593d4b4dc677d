"""CLI flags: upstream names and defaults, and clear errors for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metacollector.cli import build_parser, settings_from_args
from metacollector.settings import BindAddress, SettingsError


def run_settings(*argv: str):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(["run", *argv]))


def test_defaults_match_upstream() -> None:
    s = run_settings()
    assert (s.metrics_bind, s.health_bind) == (":8080", ":8081")
    assert s.broker_bind == BindAddress("", 45000)
    assert s.log_format == "json"


def test_bind_addresses() -> None:
    assert BindAddress.parse("x", "[::1]:45000") == BindAddress("::1", 45000)
    assert str(BindAddress("::1", 1)) == "[::1]:1"
    with pytest.raises(SettingsError, match="--broker-bind-address: port 'abc'"):
        run_settings("--broker-bind-address", ":abc")
    with pytest.raises(SettingsError, match="not HOST:PORT"):
        run_settings("--metrics-bind-address", "8080")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--broker-server-cert", "c.pem"], "must be given together"),
        (["--broker-client-ca", "ca.pem"], "needs --broker-server-cert"),
        (["--broker-node-binding"], "needs client certificates"),
    ],
)
def test_inconsistent_tls_flags(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        run_settings(*argv)


def test_cli_reports_bad_flag_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metacollector.cli", "run", "--broker-client-ca", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "metacollector: error: --broker-client-ca (mTLS) needs --broker-server-cert/key (TLS)"
    ]


def test_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metacollector.cli", "version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("metacollector 0.")


@pytest.mark.parametrize(
    ("argv", "level", "fmt"),
    [
        ([], "info", "json"),
        (["--zap-log-level=debug"], "debug", "json"),
        (["--zap-log-level", "error", "--zap-encoder", "console"], "error", "console"),
        (["--zap-log-level=panic"], "error", "json"),
        (["--zap-log-level=3"], "debug", "json"),  # integer verbosity: more than info
        (["--zap-devel"], "debug", "console"),  # development defaults
        (["--zap-devel=false"], "info", "json"),
        (["--zap-devel", "--zap-encoder=json"], "debug", "json"),
        (["--zap-log-level=debug", "--log-level=warning"], "warning", "json"),  # ours win
    ],
)
def test_zap_flags_map_onto_level_and_format(argv: list[str], level: str, fmt: str) -> None:
    s = run_settings(*argv)
    assert (s.log_level, s.log_format) == (level, fmt)
    assert s.unmapped_flags == ()


def test_other_zap_flags_are_accepted_and_reported() -> None:
    s = run_settings("--zap-stacktrace-level=panic", "--zap-time-encoding=epoch")
    assert dict(s.unmapped_flags) == {
        "--zap-stacktrace-level": "panic",
        "--zap-time-encoding": "epoch",
    }


@pytest.mark.parametrize("bad", ["--zap-log-level=loud", "--zap-log-level=0", "--zap-devel=maybe"])
def test_bad_zap_values_are_usage_errors(bad: str) -> None:
    with pytest.raises(SystemExit):
        run_settings(bad)


def test_upstream_binary_name_entry_point() -> None:
    """`meta-collector` (upstream's binary, the image's /meta-collector) is installed."""
    import importlib.metadata

    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["meta-collector"] == scripts["metacollector"] == "metacollector.cli:main"
