"""Sans-I/O gRPC message framing (length-prefixed messages) and status trailers.

A gRPC message on the wire is a 1-byte compressed flag, a 4-byte big-endian length and the
payload; HTTP/2 DATA frames may split or join messages anyhow.
"""

from __future__ import annotations

import struct

from metacollector.grpc.status import GrpcError, Status

_PREFIX = struct.Struct(">BI")
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


def encode_message(payload: bytes) -> bytes:
    """Frame one uncompressed message."""
    return _PREFIX.pack(0, len(payload)) + payload


class MessageDecoder:
    """Reassemble messages from DATA frame payloads."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message now complete, in order."""
        self._buffer += data
        out: list[bytes] = []
        buf = self._buffer
        while len(buf) >= 5:
            compressed, length = _PREFIX.unpack_from(buf)
            if compressed:
                raise GrpcError(Status.UNIMPLEMENTED, "compressed messages are not supported")
            if length > self.max_message_size:
                raise GrpcError(
                    Status.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes exceeds the limit of {self.max_message_size}",
                )
            if len(buf) < 5 + length:
                break
            out.append(bytes(buf[5 : 5 + length]))
            del buf[: 5 + length]
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def end(self) -> None:
        """The stream ended: anything left over is a truncated message."""
        if self._buffer:
            raise GrpcError(
                Status.INTERNAL, f"stream ended inside a message ({len(self._buffer)} bytes left)"
            )


def percent_encode(message: str) -> str:
    """grpc-message encoding: bytes outside 0x20-0x7E, and '%', as %XX of their UTF-8."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode()
    )


def status_trailers(status: Status, message: str = "") -> list[tuple[str, str]]:
    trailers = [("grpc-status", str(int(status)))]
    if message:
        trailers.append(("grpc-message", percent_encode(message)))
    return trailers
