"""The watch-stream decoder: \\n only, any chunking, bounded lines."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metacollector.kube.stream import LineTooLong, TruncatedLine, WatchDecoder, decode_event


def event_line(i: int, name: str) -> bytes:
    return (
        json.dumps(
            {"type": "ADDED", "object": {"metadata": {"name": name, "uid": str(i)}}},
            ensure_ascii=False,
        ).encode()
        + b"\n"
    )


@given(st.lists(st.text(max_size=30), min_size=1, max_size=20), st.data())
def test_any_chunking_yields_exact_lines(names: list[str], data: st.DataObject) -> None:
    stream = b"".join(event_line(i, n) for i, n in enumerate(names))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = WatchDecoder()
    lines = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        lines += decoder.feed(stream[prev:cut])
        prev = cut
    decoder.end()
    assert [json.loads(line)["object"]["metadata"]["name"] for line in lines] == names


def test_unicode_line_separators_inside_strings_do_not_split() -> None:
    line = event_line(1, "a\u0085b\u2028c\u2029d\x1c")
    assert line.count(b"\n") == 1
    decoder = WatchDecoder()
    [out] = decoder.feed(line)
    assert decode_event(out).type == "ADDED"
    assert json.loads(out)["object"]["metadata"]["name"] == "a\u0085b\u2028c\u2029d\x1c"


def test_line_bound_and_truncation() -> None:
    decoder = WatchDecoder(max_line_bytes=100)
    with pytest.raises(LineTooLong, match="longer than 100 bytes"):
        decoder.feed(b"x" * 101)
    decoder = WatchDecoder(max_line_bytes=100)
    with pytest.raises(LineTooLong):
        decoder.feed(b"y" * 150 + b"\n")
    decoder = WatchDecoder()
    assert decoder.feed(b'{"type":"ADDED"') == []
    with pytest.raises(TruncatedLine):
        decoder.end()


def test_blank_lines_skipped() -> None:
    assert WatchDecoder().feed(b"\n\n" + event_line(1, "x") + b"\n") == [event_line(1, "x")[:-1]]
