"""Logging: JSON lines (default) or a console format on stderr, with repeats rate-limited.

JSON lines look like ``{"ts":"2024-05-01T12:00:00.123Z","level":"info","logger":
"broker.grpc-server","msg":"received watch request","node":"n1",...}``: every ``extra={...}``
field becomes a top-level key, in the order given. Upstream's logger names, wording and leading
fields are kept for the lines its e2e tests and Falco operators search for (logger ``broker``:
``starting grpc server`` with ``addr``; logger ``broker.grpc-server``: ``received watch
request`` and ``starting initial event sync`` with ``node`` then ``subscriber UID``, ``context
canceled, closing connection`` / ``closing connection`` and ``stream deleted`` with
``subscriber`` = the node name); our own fields follow theirs.

Rate limiting: a record repeating the same logger, level, message and identity fields
(:data:`KEY_FIELDS`, e.g. the resource and cause of a watch restart) is written at most
``burst`` times per ``window`` seconds; the rest are counted and reported as one
``suppressed N repeats`` line when the window ends. Volatile fields (errors, delays) don't make
a record new, so a flapping watch cannot flood the log. Lines for distinct subscribers never
collide (each carries its own ``subscriber``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec

# LogRecord attributes that are not ``extra`` fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# The fields that identify *what* a record is about; used (with logger, level and message) as
# the rate-limiting key.
KEY_FIELDS = (
    "node",
    "subscriber",
    "subscriber UID",
    "resource",
    "kind",
    "cause",
    "status",
    "path",
    "signal",
)
# Upstream's logger names (controller-runtime's ``ctrl.Log.WithName("broker")`` and its
# ``grpc-server`` child): upstream's e2e tests and operators' log searches key on them.
BROKER_LOGGER = "broker"
GRPC_SERVER_LOGGER = "broker.grpc-server"
_RESERVED = ("ts", "level", "logger", "msg")

_encoder = msgspec.json.Encoder()


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra={...}`` fields of a record, in the order they were given."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def rfc3339(created: float) -> str:
    """UTC, millisecond precision, ``Z`` suffix (what Go's zap and jq users expect)."""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            doc[f"field.{key}" if key in _RESERVED else key] = _jsonable(value)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        elif record.stack_info:
            doc["stack"] = record.stack_info
        return _encoder.encode(doc).decode()


class ConsoleFormatter(logging.Formatter):
    """Human-readable: ``12:00:00.123 INFO    received watch request  node=n1 subscriber=3``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in extra_fields(record).items())
        created = datetime.fromtimestamp(record.created)
        stamp = created.strftime("%H:%M:%S.") + f"{created.microsecond // 1000:03d}"
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# --- rate limiting ----------------------------------------------------------------------------

Key = tuple[Any, ...]


@dataclass
class _Window:
    start: float
    count: int
    suppressed: int
    template: logging.LogRecord  # the first record of the window, for the summary line


@dataclass(frozen=True)
class Suppressed:
    """``count`` records like ``record`` were not written in the window that just ended."""

    record: logging.LogRecord
    count: int


class RepeatLimiter:
    """Sans-I/O core of the rate limit: at most ``burst`` records per key per ``window``
    seconds. :meth:`admit` says whether to write a record and which summaries are due."""

    def __init__(
        self,
        burst: int = 5,
        window: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.burst, self.window, self.clock, self.max_keys = burst, window, clock, max_keys
        self._windows: dict[Key, _Window] = {}
        self._next_sweep = 0.0

    @staticmethod
    def key(record: logging.LogRecord) -> Key:
        msg = record.msg if isinstance(record.msg, str) else repr(record.msg)
        ident = tuple(str(getattr(record, f, "")) for f in KEY_FIELDS)
        return (record.name, record.levelno, msg, ident)

    def admit(self, record: logging.LogRecord) -> tuple[bool, list[Suppressed]]:
        now = self.clock()
        due = self._sweep(now) if now >= self._next_sweep else []
        key = self.key(record)
        win = self._windows.get(key)
        if win is not None and now - win.start >= self.window:
            if win.suppressed:
                due.append(Suppressed(win.template, win.suppressed))
            win = None
        if win is None:
            if len(self._windows) >= self.max_keys:
                due.extend(self._sweep(now, everything=True))
            self._windows[key] = _Window(now, 1, 0, record)
            return True, due
        win.count += 1
        if win.count <= self.burst:
            return True, due
        win.suppressed += 1
        return False, due

    def flush(self) -> list[Suppressed]:
        """Every pending summary (at shutdown)."""
        return self._sweep(self.clock(), everything=True)

    def _sweep(self, now: float, *, everything: bool = False) -> list[Suppressed]:
        """Close windows that have ended (or all of them), returning their summaries."""
        self._next_sweep = now + min(1.0, self.window)
        due: list[Suppressed] = []
        for key, win in list(self._windows.items()):
            if everything or now - win.start >= self.window:
                if win.suppressed:
                    due.append(Suppressed(win.template, win.suppressed))
                del self._windows[key]
        return due


def summary_record(item: Suppressed, window: float) -> logging.LogRecord:
    """The ``suppressed N repeats`` line for a closed window: same logger, level and identity
    fields as the repeated record, plus ``repeated`` (its message) and ``suppressed``."""
    src = item.record
    fields = {f: getattr(src, f) for f in KEY_FIELDS if hasattr(src, f)}
    record = logging.LogRecord(
        src.name, src.levelno, src.pathname, src.lineno, "suppressed %d repeats",
        (item.count,), None, src.funcName,
    )  # fmt: skip
    record.__dict__.update(
        fields, repeated=src.getMessage(), suppressed=item.count, window_s=window
    )
    return record


class RateLimitedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that applies :class:`RepeatLimiter` and writes the summaries."""

    def __init__(self, stream: TextIO | None = None, limiter: RepeatLimiter | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.limiter = limiter or RepeatLimiter()
        self._limit_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        with self._limit_lock:
            allowed, due = self.limiter.admit(record)
        self._emit_all(due)
        if allowed:
            self._locked_emit(record)
        return allowed

    def _locked_emit(self, record: logging.LogRecord) -> None:
        self.acquire()
        try:
            self.emit(record)
        finally:
            self.release()

    def _emit_all(self, due: Iterable[Suppressed]) -> None:
        for item in due:
            self._locked_emit(summary_record(item, self.limiter.window))

    def close(self) -> None:
        with self._limit_lock:
            due = self.limiter.flush()
        self._emit_all(due)
        self.flush()
        super().close()


NOISY_LOGGERS = ("httpx", "httpcore", "hpack", "h2", "hypercorn.access")


def configure_logging(
    level: str = "info",
    fmt: Literal["json", "console"] = "json",
    *,
    stream: TextIO | None = None,
    limiter: RepeatLimiter | None = None,
) -> RateLimitedHandler:
    """Route all stdlib logging to stderr (or ``stream``) in ``fmt``, at ``level`` and above.

    Replaces the root logger's handlers (idempotent); returns the installed handler."""
    handler = RateLimitedHandler(stream, limiter)
    handler.setFormatter(JSONFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if isinstance(old, RateLimitedHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return handler
