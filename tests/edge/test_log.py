"""Structured logging: one line per event, as key=value or JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from edge.runtime import log


@pytest.fixture
def stream():
    out = io.StringIO()
    yield out
    logging.getLogger().handlers.clear()


def test_key_value_lines_quote_what_needs_quoting(stream):
    log.setup("info", "kv", stream=stream)
    log.get("edge.test").info("actor_started", actor="buffer", note="two words", took_ms=1.5)
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert " level=info logger=edge.test event=actor_started actor=buffer " in line
    assert 'note="two words" took_ms=1.5' in line


def test_json_lines_carry_the_fields_and_the_exception(stream):
    log.setup("debug", "json", stream=stream)
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.get("edge.test").error("decode_failed", topic="a/b", exc_info=True)
    doc = json.loads(stream.getvalue())
    assert doc["event"] == "decode_failed" and doc["topic"] == "a/b" and doc["level"] == "error"
    assert "ValueError: bad frame" in doc["exc"]
    assert doc["ts"].endswith("Z")


def test_the_level_filters(stream):
    log.setup("warning", "kv", stream=stream)
    log.get("edge.test").info("hidden")
    assert stream.getvalue() == ""


def test_a_field_a_sender_controlled_never_breaks_a_log_line():
    import io as _io

    from edge.runtime import log as _log

    stream = _io.TextIOWrapper(_io.BytesIO(), encoding="utf-8")
    for fmt in ("kv", "json"):
        _log.setup("info", fmt, stream)
        _log.get("t").warning("message_quarantined", field="power_\ud800", detail="a\x00b")
        stream.flush()
    text = stream.buffer.getvalue().decode()
    assert text.count("message_quarantined") == 2 and "\\ud800" in text


def test_a_throttled_event_logs_at_most_n_lines_per_interval_and_says_how_many_it_held_back():
    from edge.runtime.log import Throttle

    now = [0.0]
    throttle = Throttle(per=3, interval_s=10, clock=lambda: now[0])
    assert [throttle.allow("bad_json") for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle.allow("bad_crc") == 0  # each key has its own budget
    now[0] = 10.0
    assert throttle.allow("bad_json") == 2  # the next line out reports the two held back
