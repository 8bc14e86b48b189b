"""The Kafka record formats (codecs/stream.py): round trips, grouping, identities, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.codecs import stream
from edge.codecs.records import Gap, Hello, Measurement, Quarantined, identity
from edge.codecs.uplink import Batch

T0 = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)


def m(device: str, label: str, value: float, t: datetime = T0, mode: str | None = "sensor-mode",
      pin: int | None = 1) -> Measurement:
    return Measurement(t, device, mode, 1 if mode else None, pin, label, value, "V", f"tele/{device}")


def test_a_batch_becomes_one_message_per_device_with_identities_and_the_rest_by_kind():
    records = [m("a", "x", 1.0), m("b", "x", 2.0), m("a", "y", 3.0, mode=None, pin=None),
               Hello(T0, "a", "iot/a/hello", 7, "1.2.3", 10, 1, 5.0),
               Quarantined(T0, "iot/c/telemetry", b"\xff", "bad_json", "not JSON", None, 0),
               Gap(T0, 100, 109, 10, "quota")]
    batch = Batch("gw-1", 17, 40, records, [40, 41, 42, 43, 44, 45])
    out = stream.from_batch(batch, stream.Topics("dec", "raw", "ev"))
    by_topic = {}
    for msg in out:
        by_topic.setdefault(msg.topic, []).append(msg)
    assert sorted(msg.key for msg in by_topic["dec"]) == [b"a", b"b"]
    rows = {r[-1]: r for msg in by_topic["dec"] for r in stream.read_measurements(msg.value).rows}
    assert set(rows) == {"gw-1/17/40", "gw-1/17/41", "gw-1/17/42"}
    assert rows["gw-1/17/40"] == (T0, "a", "sensor-mode", 1, 1, "x", 1.0, "V", "tele/a", "gw-1/17/40")
    assert rows["gw-1/17/42"][2:5] == ("", None, 0)  # no connector/pin: the key's stand-ins
    (raw,) = by_topic["raw"]
    assert raw.value == b"\xff" and stream.header(raw.headers, "reason") == "bad_json"
    assert stream.header(raw.headers, "source") == "gw-1/17/44"
    assert stream.header(raw.headers, "mqtt_topic") == "iot/c/telemetry"
    events = [stream.read_event(msg.value) for msg in by_topic["ev"]]
    assert [(e["type"], e["key"], e["device_id"]) for e in events] == [
        ("hello", identity(records[3]), "a"), ("gap", "gw-1/17/45", "gw-1")]
    assert identity(records[3]).startswith("a/hello/2026-11-24T12:00:00.123456Z/")


def test_an_event_has_one_identity_whatever_its_topic_and_another_for_any_other_content():
    hello = Hello(T0, "a", "iot/a/hello", 7, "1.2.3", 10, 1, 5.0)
    assert identity(hello) == identity(Hello(T0, "a", "central/a/hello", 7, "1.2.3", 10, 1, 5.0))
    others = [Hello(T0, "a", "iot/a/hello", 8, "1.2.3", 10, 1, 5.0),  # another seq
              Hello(T0, "a", "iot/a/hello", 7, "1.2.4", 10, 1, 5.0),  # another firmware
              Hello(T0 + timedelta(microseconds=1), "a", "iot/a/hello", 7, "1.2.3", 10, 1, 5.0),
              Hello(T0, "b", "iot/b/hello", 7, "1.2.3", 10, 1, 5.0)]
    assert len({identity(hello), *map(identity, others)}) == 5
    lone = Hello(T0, "a", "t", 7, "fw\udc80", 10, 1, 5.0)  # a lone surrogate still has an identity
    assert identity(lone) != identity(hello)


@given(st.lists(st.tuples(st.integers(0, 2**40), st.floats(allow_nan=False, allow_infinity=False)),
                min_size=1, max_size=50))
def test_measurement_times_and_values_survive_the_envelope_exactly(items):
    numbered = [(n, m("d", f"l{i}", v, T0 + timedelta(microseconds=n)))
                for i, (n, v) in enumerate(items)]
    (msg,) = stream.measurements("src", numbered, "dec")
    rows = stream.read_measurements(msg.value).rows
    assert [(r[0], r[6], r[9]) for r in rows] == [(x.time, x.value, f"src/{n}") for n, x in numbered]


@pytest.mark.parametrize("value, reason, field", [
    (b"\xc1", "bad_envelope", None),
    (msgpack.packb({"v": 9, "src": "s", "r": []}), "bad_envelope", "v"),
    (msgpack.packb({"v": 1, "src": "s"}), "bad_envelope", "r"),
])
def test_a_record_that_is_not_a_measurements_envelope_says_what_is_wrong(value, reason, field):
    with pytest.raises(stream.StreamError) as info:
        stream.read_measurements(value)
    assert (info.value.reason, info.value.field) == (reason, field)


def _row(n, label="x", pin=1, device="dev", value=1.0, topic="t"):
    return [n, 1_780_000_000_000_000, device, "sensor-mode", 1, pin, label, value, "V", topic]


@pytest.mark.parametrize("bad, reason, field", [
    ([1, 2, 3], "bad_record", "r[1]"),
    (_row(1, label="a\x00b"), "bad_text", "r[1].label"),
    (_row(1, pin=2**40), "out_of_range", "r[1].pin_position"),
    (_row(1, pin=70000 * 70000), "out_of_range", "r[1].pin_position"),
    (_row(1, device=7), "bad_type", "r[1].device_id"),
    (_row(1, value="x"), "bad_value", "r[1].value"),
    (_row(1, topic=b"bytes"), "bad_type", "r[1].topic"),
    (_row("n"), "bad_type", "r[1].n"),
])
def test_a_row_the_database_cannot_take_is_set_apart_and_its_neighbours_kept(bad, reason, field):
    value = msgpack.packb({"v": 1, "src": "gw/1", "r": [_row(0), bad, _row(2, label="y")]})
    rows, refused = stream.read_measurements(value)
    assert [r[9] for r in rows] == ["gw/1/0", "gw/1/2"]
    ((one, error),) = refused
    assert (error.reason, error.field) == (reason, field)
    assert msgpack.unpackb(one) == {"v": 1, "src": "gw/1", "r": [bad]}


def test_text_that_is_not_utf8_in_a_row_is_that_row_s_problem_only():
    good = msgpack.packb(_row(0))
    broken = msgpack.packb(_row(1, label="LABEL")).replace(b"LABEL", b"\xff\xfeBEL")
    value = msgpack.packb({"v": 1, "src": "gw/1"})[:-1]  # reopen the map: add "r" by hand
    value = b"\x83" + msgpack.packb("v") + msgpack.packb(1) + msgpack.packb("src") + msgpack.packb("gw/1") \
        + msgpack.packb("r") + b"\x92" + good + broken
    rows, refused = stream.read_measurements(value)
    assert [r[9] for r in rows] == ["gw/1/0"]
    assert refused[0][1].reason == "bad_text"


def test_rows_refused_by_the_database_go_back_into_an_envelope_of_their_own():
    rows, _ = stream.read_measurements(msgpack.packb({"v": 1, "src": "gw/1", "r": [_row(5)]}))
    again, refused = stream.read_measurements(stream.envelope(rows))
    assert again == rows and refused == []


def test_dead_letters_keep_the_original_and_name_reason_field_and_coordinates():
    msg = stream.dead_letter("raw", b"k", b"payload", [("mqtt_topic", b"t/1"), ("dlq_reason", b"old")],
                             2, 881, "bad_crc", "crc mismatch", "crc")
    assert (msg.topic, msg.key, msg.value) == ("raw.dlq", b"k", b"payload")
    headers = dict(msg.headers)
    assert headers == {"mqtt_topic": b"t/1", "dlq_reason": b"bad_crc", "dlq_detail": b"crc mismatch",
                       "dlq_source": b"raw/2/881", "dlq_field": b"crc"}


def test_events_without_the_fields_a_sink_needs_are_refused():
    with pytest.raises(stream.StreamError, match="key"):
        stream.read_event(b'{"type": "hello", "time": "x", "device_id": "d"}')
    with pytest.raises(stream.StreamError):
        stream.read_event(b"[1]")
