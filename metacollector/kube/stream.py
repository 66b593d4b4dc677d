"""Sans-I/O decoder for watch streams: raw bytes -> complete NDJSON lines.

Splits on b"\\n" only: ``aiter_lines`` would also split on U+0085, U+2028 and other code points
that are valid inside JSON strings. One line is bounded so a broken or hostile server cannot
make us buffer without limit.
"""

from __future__ import annotations

import msgspec

DEFAULT_MAX_LINE = 16 * 1024 * 1024


class LineTooLong(Exception):
    """A watch line exceeded the bound."""


class TruncatedLine(Exception):
    """The stream ended in the middle of a line."""


class WatchDecoder:
    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete, non-empty line."""
        buf = self._buffer
        buf += data
        if b"\n" not in data:
            if len(buf) > self.max_line_bytes:
                raise LineTooLong(f"watch line longer than {self.max_line_bytes} bytes")
            return []
        *lines, rest = bytes(buf).split(b"\n")
        self._buffer = bytearray(rest)
        for line in lines:
            if len(line) > self.max_line_bytes:
                raise LineTooLong(f"watch line longer than {self.max_line_bytes} bytes")
        if len(rest) > self.max_line_bytes:
            raise LineTooLong(f"watch line longer than {self.max_line_bytes} bytes")
        return [line for line in lines if line.strip()]

    def end(self) -> None:
        if self._buffer.strip():
            raise TruncatedLine(f"stream ended inside a line ({len(self._buffer)} bytes)")
        self._buffer.clear()


class Status(msgspec.Struct):
    code: int = 0
    reason: str = ""
    message: str = ""


class RawEvent(msgspec.Struct):
    type: str
    object: msgspec.Raw = msgspec.Raw()  # empty when absent (refused, unless a BOOKMARK's)


class Bookmark(msgspec.Struct):
    class _Meta(msgspec.Struct):
        resourceVersion: str = ""
        annotations: dict[str, str] | None = None

    metadata: _Meta = msgspec.field(default_factory=_Meta)


_raw_event = msgspec.json.Decoder(RawEvent)
_status = msgspec.json.Decoder(Status)
_bookmark = msgspec.json.Decoder(Bookmark)


def decode_event(line: bytes) -> RawEvent:
    """Split one watch line into its type and raw object (decoded later, by kind).

    Raises msgspec.DecodeError for anything that is not one JSON event (msgspec itself raises
    UnicodeDecodeError for invalid UTF-8 inside a string)."""
    try:
        return _raw_event.decode(line)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"invalid UTF-8: {exc}") from None


def missing(raw: msgspec.Raw) -> bool:
    """Whether an event's object is absent or null."""
    return len(raw) == 0 or bytes(raw).strip() == b"null"


def decode_status(raw: msgspec.Raw) -> Status:
    return _status.decode(raw)


def decode_bookmark(raw: msgspec.Raw) -> tuple[str, dict[str, str]]:
    """A BOOKMARK's resourceVersion and annotations (none without an object)."""
    b = Bookmark() if missing(raw) else _bookmark.decode(raw)
    return b.metadata.resourceVersion, b.metadata.annotations or {}
