"""controller-runtime's zap flags, accepted so upstream manifests run unchanged.

The upstream binary binds ``zap.Options`` to its command line: ``--zap-devel``,
``--zap-encoder``, ``--zap-log-level``, ``--zap-stacktrace-level`` and ``--zap-time-encoding``.
Level and encoder map onto ``--log-level`` and ``--log-format``; the other two have no
counterpart here (our JSON lines always carry an RFC 3339 ``ts``; tracebacks come with errors)
and are reported once at start-up by :func:`ZapFlags.unmapped`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

# zap's level names (controller-runtime accepts these, or a positive integer verbosity).
_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "dpanic": "error",
    "panic": "error",
    "fatal": "error",
}
_ENCODERS = ("json", "console")
_STACKTRACE_LEVELS = ("debug", "info", "warn", "error", "dpanic", "panic", "fatal")
_TIME_ENCODINGS = ("epoch", "millis", "nano", "iso8601", "rfc3339", "rfc3339nano")
_TRUE = ("1", "t", "true", "y", "yes")
_FALSE = ("0", "f", "false", "n", "no")


def _go_bool(value: str) -> bool:
    """Go's strconv.ParseBool, so ``--zap-devel=false`` means false."""
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean")


def _zap_level(value: str) -> str:
    """A zap level name, or an integer verbosity (1, 2, ...: more verbose than info)."""
    lowered = value.lower()
    if lowered in _LEVELS:
        return _LEVELS[lowered]
    try:
        number = int(lowered)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected debug, info, error, panic or an integer > 0"
        ) from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: an integer level must be > 0")
    return "debug"


def add_zap_flags(parser: argparse.ArgumentParser) -> None:
    """Register the five zap flags (defaults None: "not given")."""
    group = parser.add_argument_group("controller-runtime zap flags (upstream compatibility)")
    group.add_argument(
        "--zap-devel",
        type=_go_bool,
        nargs="?",
        const=True,
        default=None,
        help="development defaults: console encoder, debug level",
    )
    group.add_argument("--zap-encoder", choices=_ENCODERS, default=None, help="= --log-format")
    group.add_argument("--zap-log-level", type=_zap_level, default=None, help="= --log-level")
    group.add_argument(
        "--zap-stacktrace-level",
        choices=_STACKTRACE_LEVELS,
        default=None,
        help="accepted, no effect (errors carry their traceback)",
    )
    group.add_argument(
        "--zap-time-encoding",
        choices=_TIME_ENCODINGS,
        default=None,
        help="accepted, no effect (ts is RFC 3339 UTC)",
    )


@dataclass(frozen=True)
class ZapFlags:
    devel: bool | None = None
    encoder: str | None = None
    level: str | None = None
    stacktrace_level: str | None = None
    time_encoding: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ZapFlags:
        return cls(
            args.zap_devel,
            args.zap_encoder,
            args.zap_log_level,
            args.zap_stacktrace_level,
            args.zap_time_encoding,
        )

    def log_level(self, explicit: str | None) -> str:
        """``--log-level`` if given, else ``--zap-log-level``, else debug in devel mode."""
        return explicit or self.level or ("debug" if self.devel else "info")

    def log_format(self, explicit: str | None) -> Literal["json", "console"]:
        """``--log-format`` if given, else ``--zap-encoder``, else console in devel mode."""
        chosen = explicit or self.encoder or ("console" if self.devel else "json")
        return "console" if chosen == "console" else "json"

    def unmapped(self) -> dict[str, str]:
        """The given flags that change nothing here, for one start-up log line."""
        given = {
            "--zap-stacktrace-level": self.stacktrace_level,
            "--zap-time-encoding": self.time_encoding,
        }
        return {flag: value for flag, value in given.items() if value is not None}
