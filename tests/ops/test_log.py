"""metacollector.log: JSON and console lines, extra fields, repeat rate-limiting."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from metacollector.log import RepeatLimiter, configure_logging

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_keep_upstream_wording_and_extra_fields_at_top_level(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    watch = logging.getLogger("broker.grpc-server")
    watch.info(
        "received watch request",
        extra={"node": "n1", "subscriber UID": "7", "kinds": ["Pod"]},
    )
    watch.info("stream deleted", extra={"subscriber": "n1", "subscriber UID": "7"})
    watch.debug("not at info level")
    logging.getLogger("broker").info(
        "starting grpc server", extra={"addr": ":45000", "msg_id": object()}
    )
    received, deleted, started = lines(out)
    assert received["msg"] == "received watch request" and received["node"] == "n1"
    assert received["subscriber UID"] == "7" and received["kinds"] == ["Pod"]
    assert received["level"] == "info" and received["logger"] == "broker.grpc-server"
    assert RFC3339_MS.match(str(received["ts"]))
    assert list(received)[:5] == ["ts", "level", "logger", "msg", "node"]
    # upstream's e2e pattern: logger, msg and the first field, adjacent and compact
    assert '"broker.grpc-server","msg":"stream deleted","subscriber":"n1"' in out.getvalue()
    assert deleted["msg"] == "stream deleted" and deleted["subscriber"] == "n1"
    assert started["msg"] == "starting grpc server" and started["addr"] == ":45000"
    assert str(started["msg_id"]).startswith("<object object")  # not JSON-native: str()


def test_exceptions_and_reserved_names(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    log = logging.getLogger("t")
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("handler failed", extra={"path": "/metadata.Metadata/Watch", "ts": 1})
    (doc,) = lines(out)
    assert doc["level"] == "error" and doc["msg"] == "handler failed"
    assert "ValueError: bad value" in str(doc["error"])
    assert doc["path"] == "/metadata.Metadata/Watch"
    assert doc["field.ts"] == 1 and RFC3339_MS.match(str(doc["ts"]))


def test_console_format_is_human_readable(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    logging.getLogger("m").warning("watch restart", extra={"resource": "pods", "cause": "expired"})
    assert re.match(
        r"^\d\d:\d\d:\d\d\.\d{3} WARNING watch restart  resource=pods cause=expired$",
        out.getvalue().rstrip("\n"),
    )


def test_repeats_are_limited_then_summarised(restore_logging: None) -> None:
    out, clock = io.StringIO(), FakeClock()
    configure_logging("info", "json", stream=out, limiter=RepeatLimiter(5, 10.0, clock=clock))
    log = logging.getLogger("metacollector.kube.reflector")
    for i in range(12):  # volatile fields (error, delay) do not make a record new
        log.warning("watch failed", extra={"resource": "pods", "error": f"reset {i}"})
    for _ in range(3):  # another resource is another key
        log.warning("watch failed", extra={"resource": "services", "error": "reset"})
    for subscriber in range(20):  # one line per subscriber of a node, never suppressed
        log.info("received watch request", extra={"node": "n1", "subscriber UID": subscriber})
    docs = lines(out)
    pods = [d for d in docs if d.get("resource") == "pods"]
    assert [d["error"] for d in pods] == [f"reset {i}" for i in range(5)]
    assert len([d for d in docs if d.get("resource") == "services"]) == 3
    assert len([d for d in docs if d["msg"] == "received watch request"]) == 20

    clock.now += 10.5  # the window ends; the next record (any key) brings the summary
    log.info("relist", extra={"resource": "pods", "cause": "expired"})
    summary, relist = lines(out)[len(docs) :]
    assert summary == {
        "ts": summary["ts"],
        "level": "warning",
        "logger": "metacollector.kube.reflector",
        "msg": "suppressed 7 repeats",
        "resource": "pods",
        "repeated": "watch failed",
        "suppressed": 7,
        "window_s": 10.0,
    }
    assert relist["msg"] == "relist"

    log.warning("watch failed", extra={"resource": "pods", "error": "again"})  # new window
    assert lines(out)[-1]["error"] == "again"


def test_pending_summaries_are_written_at_close(restore_logging: None) -> None:
    out, clock = io.StringIO(), FakeClock()
    handler = configure_logging(
        "info", "json", stream=out, limiter=RepeatLimiter(1, 10.0, clock=clock)
    )
    for _ in range(4):
        logging.getLogger("x").error("accept failed")
    handler.close()
    docs = lines(out)
    assert [d["msg"] for d in docs] == ["accept failed", "suppressed 3 repeats"]


def test_limiter_key_count_is_bounded() -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(1, 10.0, clock=clock, max_keys=3)
    record = logging.LogRecord("x", logging.WARNING, "", 0, "m", None, None)
    assert limiter.admit(record) == (True, [])
    assert limiter.admit(record)[0] is False
    for node in ("a", "b", "c"):
        other = logging.LogRecord("x", logging.WARNING, "", 0, "m", None, None)
        other.node = node
        allowed, due = limiter.admit(other)
        assert allowed
    # the fourth key evicted everything; the suppressed record's summary came out then
    assert [s.count for s in due] == [1]
