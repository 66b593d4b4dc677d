"""Logging: JSON lines (default) or console format on stderr, with repeat rate-limiting.

``extra={...}`` fields become top-level JSON keys; upstream's wording is kept for the lines
Falco operators grep for (``starting grpc server``, ``received watch request``,
``stream deleted``).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_encode = msgspec.json.Encoder().encode


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extra(record).items():
            doc[key] = (
                value
                if isinstance(value, str | int | float | bool | None | list | dict)
                else str(value)
            )
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RepeatFilter(logging.Filter):
    """At most ``burst`` identical (logger, msg) records per ``window`` seconds; then one
    "suppressed N repeats" note when the window rolls over."""

    def __init__(self, burst: int = 5, window: float = 10.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg if isinstance(record.msg, str) else str(record.msg))
        now = time.monotonic()
        start, count, suppressed = self._seen.get(key, [now, 0, 0])
        if now - start > self.window:
            if suppressed:
                record.suppressed_repeats = int(suppressed)
            start, count, suppressed = now, 0, 0
        count += 1
        allowed = count <= self.burst
        self._seen[key] = [start, count, suppressed + (0 if allowed else 1)]
        if len(self._seen) > 10000:
            self._seen.clear()
        return allowed


def configure_logging(level: str = "info", fmt: Literal["json", "console"] = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "hpack", "h2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
