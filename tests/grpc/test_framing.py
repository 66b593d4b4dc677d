"""grpc/framing.py on its own: messages split anywhere, joined, compressed flag, limits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as strat

from metacollector.grpc.framing import (
    MessageDecoder,
    encode_message,
    percent_encode,
    status_trailers,
)
from metacollector.grpc.status import GrpcError, Status

payloads = strat.lists(strat.binary(max_size=300), max_size=8)


@given(payloads, strat.lists(strat.integers(0, 3000), max_size=10))
def test_split_anywhere_decodes_the_same_messages(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_message(m) for m in messages)
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    decoder = MessageDecoder(1000)
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed(wire[a:b])
    assert out == messages
    assert decoder.buffered == 0
    decoder.end()


def test_byte_by_byte_and_partial_prefix() -> None:
    decoder = MessageDecoder()
    wire = encode_message(b"hello") + encode_message(b"")
    out = [m for byte in wire for m in decoder.feed(bytes([byte]))]
    assert out == [b"hello", b""]
    decoder.feed(encode_message(b"abc")[:3])
    assert decoder.buffered == 3
    with pytest.raises(GrpcError) as exc:
        decoder.end()
    assert exc.value.status is Status.INTERNAL


def test_compressed_flag_refused() -> None:
    with pytest.raises(GrpcError) as exc:
        MessageDecoder().feed(b"\x01\x00\x00\x00\x01x")
    assert exc.value.status is Status.UNIMPLEMENTED


def test_limit_refused_from_the_prefix_alone() -> None:
    decoder = MessageDecoder(100)
    assert decoder.feed(encode_message(b"x" * 100)) == [b"x" * 100]  # the limit is inclusive
    with pytest.raises(GrpcError) as exc:
        decoder.feed(b"\x00\x00\x00\x00\x65")  # 101 announced; no payload needed to refuse
    assert exc.value.status is Status.RESOURCE_EXHAUSTED


def test_status_trailers_percent_encoding() -> None:
    assert status_trailers(Status.OK) == [("grpc-status", "0")]
    assert percent_encode("a%b ü\n") == "a%25b %C3%BC%0A"
    assert status_trailers(Status.INTERNAL, "x") == [("grpc-status", "13"), ("grpc-message", "x")]
