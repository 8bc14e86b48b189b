"""Hypothesis strategies for the codecs. They live in tests/: hypothesis never ships."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from edge.codecs.records import CardRead, CommandAck, Gap, Hello, Measurement, OtaStatus, Quarantined, Status
from edge.codecs.registry import ENCODINGS, MODBUS_HEADER, DataPoint, DeviceTemplate

INT_RANGES = {
    "Int8": (-(2**7), 2**7 - 1), "Uint8": (0, 2**8 - 1), "Int16": (-(2**15), 2**15 - 1),
    "Uint16": (0, 2**16 - 1), "Int32": (-(2**31), 2**31 - 1), "Uint32": (0, 2**32 - 1),
}


@st.composite
def templates(draw, framing: str | None = None):
    """A template of 1..12 data points of every encoding and layout, with raw values for
    each point. Returns (template, {label: raw})."""
    framing = framing or draw(st.sampled_from(["none", "modbus-rtu"]))
    offset = MODBUS_HEADER if framing == "modbus-rtu" else draw(st.integers(0, 3))
    points, raws = [], {}
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from([*INT_RANGES, "Float32", "Bits"]))
        label = f"p{i}"
        if kind == "Bits":
            length = draw(st.integers(1, 4))
            used = 0
            for j in range(draw(st.integers(1, 3))):  # several fields share the bytes
                if used >= 8 * length:
                    break
                bit_length = draw(st.integers(1, min(8 * length - used, 16)))
                decimals = draw(st.integers(0, 3))
                points.append(DataPoint(f"{label}.{j}", "Bits", offset, length, decimals,
                                        bit_offset=used, bit_length=bit_length))
                raws[f"{label}.{j}"] = draw(st.integers(0, 2**bit_length - 1))
                used += bit_length + draw(st.integers(0, 2))
            offset += length + draw(st.integers(0, 2))
            continue
        size = ENCODINGS[kind][1]
        orders = ["big", "little"] + (["word-swapped"] if size == 4 else [])
        order = draw(st.sampled_from(orders))
        if kind == "Float32":
            raw = draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
            decimals, whole, enum = 0, False, {}
        else:
            low, high = INT_RANGES[kind]
            raw = draw(st.integers(low, high))
            decimals = draw(st.integers(0, 4))
            whole = decimals == 0 and draw(st.booleans())
            enum = {raw: "this", **{draw(st.integers(low, high)): "other"}} if draw(st.booleans()) else {}
        unit = draw(st.sampled_from(["", " V", " °C", " %"]))
        points.append(DataPoint(label, kind, offset, size, decimals, append=unit, whole_number=whole,
                                byte_order=order, enum=enum))
        raws[label] = raw
        offset += size + draw(st.integers(0, 3))
    return DeviceTemplate("generated", "Sensor", tuple(points), framing), raws


def expected_value(dp: DataPoint, raw: int | float) -> float:
    """What decoding must return for a raw value: the DataPoint rule, written out again."""
    value = raw / float(10**dp.decimals) if dp.decimals else float(raw)
    return float(round(value)) if dp.whole_number else value


utc_times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                         timezones=st.just(UTC))
# Text every hop can carry (edge.codecs.limits): no lone surrogates, no NUL.
short_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                     max_size=8)  # at most 32 bytes: fits every field
maybe_text = st.none() | short_text
maybe_int = st.none() | st.integers(0, 2**15 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)

measurements = st.builds(Measurement, utc_times, short_text, maybe_text, maybe_int,
                         st.none() | st.integers(0, 2**31 - 1), short_text, finite, maybe_text, maybe_text)
events = st.one_of(
    st.builds(Hello, utc_times, short_text, maybe_text, st.none() | st.integers(0, 2**32 - 1),
              short_text, st.integers(0, 2**40), st.integers(0, 100), finite, st.none() | finite),
    st.builds(Status, utc_times, short_text, maybe_text, st.none() | st.integers(0, 2**32 - 1),
              st.sampled_from(["online", "offline"])),
    st.builds(CommandAck, utc_times, short_text, maybe_text, st.none() | st.integers(0, 2**32 - 1),
              short_text, st.sampled_from(["accepted", "rejected"]), maybe_text),
    st.builds(OtaStatus, utc_times, short_text, maybe_text, st.none() | st.integers(0, 2**32 - 1),
              short_text, short_text, st.none() | finite, maybe_text),
    st.builds(CardRead, utc_times, short_text, maybe_text, short_text, st.integers(1, 4),
              st.none() | st.integers(0, 64), short_text, maybe_text, st.none() | finite),
)
quarantined = st.builds(Quarantined, utc_times, short_text, st.binary(max_size=64), short_text,
                        short_text, maybe_text, st.none() | st.integers(0, 2**31))
gaps = st.builds(Gap, utc_times, st.integers(0, 2**62), st.integers(0, 2**62),
                 st.integers(0, 2**31), short_text)
records = st.lists(st.one_of(measurements, measurements, events, quarantined, gaps), max_size=60)

# Anything a hostile peer could put in a frame's record list: the right kinds with values
# of any type, size and encoding, and the wrong kinds.
wild_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                | st.text(max_size=20) | st.binary(max_size=20)
                | st.sampled_from(["", "\x00", "\ud800", "a" * 600, "online", "hello", "gap"]))
_us = st.integers(0, 2**60) | wild_scalars


def _shaped(kind: int, fields: int):
    """A record of ``kind`` with the right number of fields, each of any type."""
    return st.builds(lambda us, rest: [kind, us, *rest], _us,
                     st.lists(wild_scalars, min_size=fields, max_size=fields))


wild_wire = st.one_of(
    _shaped(0, 8), _shaped(0, 8), _shaped(2, 7), _shaped(3, 4),
    st.builds(lambda us, t, f: [1, us, t, f], _us,
              st.sampled_from(["hello", "status", "command_ack", "ota_status", "card_read", "x"]),
              st.dictionaries(st.sampled_from(["device_id", "topic", "seq", "fw_version", "uptime_s",
                                               "broker_connections", "buf_usage_pct", "status",
                                               "cmd_id", "result", "card_id", "connector_mode",
                                               "connector", "position", "other"]),
                              wild_scalars, max_size=10)),
    st.recursive(wild_scalars, lambda inner: st.lists(inner, max_size=12), max_leaves=12),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
_field_names = st.sampled_from(["timestamp", "data", "v", "device_id", "ts", "seq", "msg_type",
                                "measurements", "state", "voltage", "status", "header", "card_id",
                                "button_id", "button_pressed", "door_1", "zone", "type", "val"])
json_objects = st.dictionaries(_field_names | st.text(max_size=8), json_values, max_size=8)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_objects.map(lambda v: json.dumps(v).encode()),
)
topics = st.one_of(
    st.text(max_size=60),
    st.builds(lambda k, mac, mode, conn, comp: f"{k}/f2-{mac}/{mode}/{conn}/{comp}",
              st.sampled_from(["cmnd", "stat", "tele", "xx"]),
              st.sampled_from(["e4fd45f654be", "0A1B2C3D4E5F", "abc123def456", "zz"]),
              st.sampled_from(["sensor-mode", "alarm-mode", "access-control-mode", "?"]),
              st.sampled_from(["1", "J1", "J2", "4", "9"]),
              st.sampled_from(["sensor-1", "sensor-2", "strike-1", "reader-1", "siren-1",
                               "motion-sensor-1", "door-sensors", "exit-buttons", "status", "x-1"])),
    st.builds(lambda d, k: f"iot/{d}/{k}", st.sampled_from(["pm-1", "", "a/b"]),
              st.sampled_from(["telemetry", "hello", "status", "command/ack", "ota/status", "x"])),
    st.builds(lambda k, d: f"homelab/{k}/{d}", st.text(max_size=8), st.text(max_size=8)),
    st.just("site/inverters/INV-1/telemetry"),
)
received = st.none() | utc_times
ticks = st.integers(0, 10**6).map(lambda s: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s))
