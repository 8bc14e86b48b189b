"""What every later hop can carry: the one rule a codec's output is checked against.

A record leaves a codec only if it can be packed (msgpack: integers within 64 bits, text
that is valid UTF-8), framed (the uplink frame), produced (Kafka's message size) and
inserted (PostgreSQL: ``smallint`` connector, ``integer`` pin, finite ``double``, text
without NUL, B-tree keys far below the 2,704-byte index row limit, ``jsonb`` events).
``check_record`` raises ``ValueError_`` naming the field for anything else, so a bad
value is an error *of that record* (the message is quarantined with the reason, its good
records still flow) instead of an exception three hops later.

The same checks run where records re-enter from the wire (``edge.codecs.uplink`` on the
server, ``edge.codecs.stream`` in the sink), because a frame or a Kafka record is input
too. Sizes: a device payload above ``MAX_PAYLOAD`` is refused before parsing and kept as
a bounded prefix with its digest (``bounded_payload``), never whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from edge.codecs.errors import ValueError_
from edge.codecs.records import Event, Gap, Measurement, Quarantined

MAX_PAYLOAD = 256 * 1024  # bytes of one device message the decoders read
KEEP_PAYLOAD = 4 * 1024  # bytes of an oversized payload kept in quarantine, with its digest
MAX_RECORDS = 1000  # records one message may become (v2 allows 200 measurements)
MAX_DETAIL = 2000  # characters of a quarantine or dead-letter explanation

# Text fields: the most bytes (UTF-8) each may hold. Key columns stay far below the B-tree
# row limit; the rest are bounded so that a record's size is, and with it a frame's.
TEXT_BYTES = {
    "device_id": 128, "connector_mode": 64, "label": 128, "unit": 32, "topic": 512,
    "card_id": 256, "read_type": 64, "fw_version": 128, "cmd_id": 128, "result": 32,
    "detail": 1024, "ota_state": 32, "fw_version_target": 128, "status": 32,
}
DEFAULT_TEXT_BYTES = 256
INT2 = (-(2**15), 2**15 - 1)  # iot_measurements.connector
INT4 = (-(2**31), 2**31 - 1)  # iot_measurements.pin_position
INT8 = (-(2**63), 2**63 - 1)  # msgpack's signed range, PostgreSQL bigint
INT_RANGES = {"connector": (0, INT2[1]), "pin_position": (0, INT4[1]), "seq": (0, 2**32 - 1)}
# What datetime, the uplink frame (microseconds since 1970 in 64 bits) and timestamptz share.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def as_float(value: Any) -> float | None:
    """A JSON number as a finite float, or None (booleans, text, 1e999, 10**400, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def text_problem(value: str, max_bytes: int) -> str | None:
    """Why ``value`` cannot travel as text, or None."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError as exc:
        return f"is not valid UTF-8 (a lone surrogate at character {exc.start})"
    if "\x00" in value:
        return f"contains NUL at character {value.index(chr(0))}"
    if size > max_bytes:
        return f"is {size} bytes long, at most {max_bytes} allowed"
    return None


def check_text(value: Any, field: str, max_bytes: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError_(f"{field} must be text, got {type(value).__name__}", field=field,
                          reason="bad_type")
    problem = text_problem(value, max_bytes or TEXT_BYTES.get(field, DEFAULT_TEXT_BYTES))
    if problem is not None:
        raise ValueError_(f"{field} {problem}", field=field,
                          reason="too_long" if "allowed" in problem else "bad_text")


def check_int(value: Any, field: str, low: int, high: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError_(f"{field} must be an integer, got {type(value).__name__}", field=field,
                          reason="bad_type")
    if not low <= value <= high:
        raise ValueError_(f"{field} {value} is outside {low}..{high}"[:200], field=field,
                          reason="out_of_range")


def check_time(value: Any, field: str = "time") -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError_(f"{field} must be an aware datetime, got {type(value).__name__}", field=field,
                          reason="bad_type")
    if not EARLIEST <= value <= LATEST:
        raise ValueError_(f"{field} {value.isoformat()} is outside what can be stored", field=field,
                          reason="out_of_range")


_MEASUREMENT_TEXT = (("device_id", 1, False), ("connector_mode", 2, True), ("label", 5, False),
                     ("unit", 7, True), ("topic", 8, True))
# Strings already checked. Most repeat (devices, labels, units, topics), so the usual
# measurement is checked by set lookups alone (bench/codecs.py: about 0.3 µs).
_good_text: set[str] = set()
_GOOD_TEXT_MAX = 50_000
_INF = math.inf
_CONNECTOR_MAX, _PIN_MAX = INT_RANGES["connector"][1], INT_RANGES["pin_position"][1]


def check_measurement(m: Any) -> None:
    """A ``Measurement`` (any tuple of its shape) that every hop can carry, or ``ValueError_``
    naming the field."""
    try:
        t, device, mode, connector, pin, label, value, unit, topic = m
        good = _good_text
        if (EARLIEST <= t <= LATEST and device in good and label in good
                and (mode is None or mode in good) and (unit is None or unit in good)
                and (topic is None or topic in good)
                and (connector is None or (type(connector) is int and 0 <= connector <= _CONNECTOR_MAX))
                and (pin is None or (type(pin) is int and 0 <= pin <= _PIN_MAX))
                and type(value) is float and -_INF < value < _INF):
            return
    except (TypeError, ValueError):  # a naive or non-datetime time, an unhashable field, ...
        pass
    _check_measurement_field_by_field(m)


def _check_measurement_field_by_field(m: Any) -> None:
    if not isinstance(m, tuple) or len(m) != 9:
        raise ValueError_("a measurement has 9 fields", field="record", reason="bad_type")
    check_time(m[0])
    for field, index, optional in _MEASUREMENT_TEXT:
        check_text(m[index], field, optional=optional)
    if m[3] is not None:
        check_int(m[3], "connector", *INT_RANGES["connector"])
    if m[4] is not None:
        check_int(m[4], "pin_position", *INT_RANGES["pin_position"])
    if as_float(m[6]) is None:
        raise ValueError_(f"value must be a finite number, got {m[6]!r}"[:200], field="value",
                          reason="bad_value")
    if len(_good_text) >= _GOOD_TEXT_MAX:
        _good_text.clear()
    _good_text.update(x for _, i, _ in _MEASUREMENT_TEXT if (x := m[i]) is not None)


@cache
def _schema(cls: type) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    """(field, the types it may hold, optional) of an event class, from its annotations."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "time":
            continue
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        kinds = tuple(a for a in args if a is not type(None))
        out.append((f.name, kinds, type(None) in args))
    return tuple(out)


def check_event(event: Any) -> None:
    """An event dataclass whose every field has its declared type and a value within what
    travels: text as ``check_text``, integers within their column, finite floats."""
    check_time(event.time)
    for name, kinds, optional in _schema(type(event)):
        value = getattr(event, name)
        if value is None and optional:
            continue
        if str in kinds:
            check_text(value, name)
        elif int in kinds:
            check_int(value, name, *INT_RANGES.get(name, INT8))
        elif float in kinds and as_float(value) is None:
            raise ValueError_(f"{name} must be a finite number, got {value!r}"[:200], field=name,
                              reason="bad_value")


def check_wire_record(record: Any) -> None:
    """Any record that came in on the wire (an uplink frame): of a known kind, and every
    field of the type and range it is stored as."""
    kind = type(record)
    if kind is Measurement:
        check_measurement(record)
    elif isinstance(record, Event):
        check_event(record)
    elif kind is Quarantined:
        check_time(record.time)
        check_text(record.topic, "topic", 65_535)
        if not isinstance(record.payload, bytes) or len(record.payload) > MAX_PAYLOAD:
            raise ValueError_(f"payload must be at most {MAX_PAYLOAD} bytes", field="payload",
                              reason="bad_type" if not isinstance(record.payload, bytes) else "too_long")
        check_text(record.reason, "reason", 64)
        check_text(record.message, "message", 4 * MAX_DETAIL)
        check_text(record.field, "field", 1024, optional=True)
        check_int(record.offset, "offset", *INT8, optional=True)
    elif kind is Gap:
        check_time(record.time)
        for name in ("first_seq", "last_seq", "count"):
            check_int(getattr(record, name), name, 0, INT8[1])
        check_text(record.reason, "reason", 64)
    else:
        raise ValueError_(f"unknown record type {kind.__name__}", field="kind", reason="bad_type")


def check_window(time: datetime, received_at: datetime | None, max_age: timedelta | None,
                 max_ahead: timedelta | None) -> None:
    """A device's time within the plausibility window around the receive time."""
    if received_at is None:
        return
    if max_age is not None and time < received_at - max_age:
        raise ValueError_(f"time {time.isoformat()} is more than {max_age} before it was received "
                          f"({received_at.isoformat()})", field="time", reason="implausible_time")
    if max_ahead is not None and time > received_at + max_ahead:
        raise ValueError_(f"time {time.isoformat()} is more than {max_ahead} after it was received "
                          f"({received_at.isoformat()})", field="time", reason="implausible_time")


def safe_text(value: str, max_chars: int = MAX_DETAIL) -> str:
    """Any text made storable: surrogates escaped, NUL shown as ``\\x00``, length bounded."""
    if len(value) > max_chars:
        value = value[:max_chars]
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode()
    return value.replace("\x00", "\\x00")


def bounded_payload(payload: bytes, detail: str) -> tuple[bytes, str]:
    """What a quarantine or dead letter keeps of ``payload``, and its ``detail`` made
    storable: the payload whole when it is at most ``MAX_PAYLOAD``, else its first
    ``KEEP_PAYLOAD`` bytes, the original size and SHA-256 put in front of the detail."""
    if len(payload) <= MAX_PAYLOAD:
        return payload, safe_text(detail)
    digest = hashlib.sha256(payload).hexdigest()
    note = f"payload of {len(payload)} bytes (sha256 {digest}); the first {KEEP_PAYLOAD} bytes are kept"
    return payload[:KEEP_PAYLOAD], safe_text(f"{note}; {detail}")
