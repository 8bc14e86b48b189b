"""Homelab meters (``homelab/<kind>/<device>``) and asset telemetry (inverters, batteries).

Homelab: a flat JSON object; every numeric field (or a string with a unit, such as
``"27.93 °C"``) is a measurement, its unit from the string or from the field's suffix.
Asset telemetry: ``header`` (``event_id``, ``asset_id``), ``location``, ``measurements``
and ``timestamp``; ``event_id`` is the message id downstream deduplicates on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from edge.codecs.errors import CodecError, PayloadError, TopicError, ValueError_
from edge.codecs.f2 import parse_json, parse_time
from edge.codecs.limits import as_float
from edge.codecs.records import Event, Measurement

_VALUE_WITH_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\d\s].*?)?\s*$")
# Field-name suffixes and names whose unit is implied (longest suffix first).
UNIT_SUFFIXES = (("_kwh", "kWh"), ("_kw", "kW"), ("_wh", "Wh"), ("_w", "W"), ("_v", "V"),
                 ("_a", "A"), ("_hz", "Hz"), ("_c", "°C"), ("_pct", "%"))
UNIT_NAMES = {"voltage": "V", "current": "A", "power": "W", "frequency": "Hz",
              "temperature": "°C", "humidity": "%"}
IGNORED = frozenset({"timestamp", "ts", "time", "device_id", "id"})


def unit_for(name: str) -> str | None:
    lower = name.lower()
    for suffix, unit in UNIT_SUFFIXES:
        if lower.endswith(suffix):
            return unit
    return UNIT_NAMES.get(lower)


def number_with_unit(value: Any) -> tuple[float, str | None]:
    """``12.5`` -> (12.5, None); ``"27.93 °C"`` -> (27.93, "°C"); anything else raises."""
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        number = as_float(value)
        if number is None:
            raise TypeError(f"expected a finite number, got {value!r}"[:120])
        return number, None
    if isinstance(value, str) and len(value) <= 64:
        match = _VALUE_WITH_UNIT.match(value)
        if match and math.isfinite(number := float(match.group(1))):
            return number, match.group(2) or None
    raise TypeError(f"expected a number or a number with a unit, got {value!r}"[:120])


def _measurements(doc: Mapping[str, Any], time: datetime, device_id: str, mode: str | None,
                  topic: str, prefix: str = "") -> tuple[list[Measurement | Event], list[CodecError]]:
    records: list[Measurement | Event] = []
    errors: list[CodecError] = []
    for key, value in doc.items():
        if key in IGNORED:
            continue
        try:
            number, unit = number_with_unit(value)
        except TypeError as exc:
            errors.append(ValueError_(str(exc), field=prefix + key, topic=topic))
            continue
        records.append(Measurement(time, device_id, mode, None, None, key, number,
                                   unit or unit_for(key), topic))
    return records, errors


def decode_homelab(topic: str, payload: bytes, received_at: datetime | None
                   ) -> tuple[list[Measurement | Event], list[CodecError]]:
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "homelab" or not parts[1] or not parts[2]:
        raise TopicError("a homelab topic is homelab/<kind>/<device>", topic=topic)
    doc = parse_json(payload)
    time = _time(doc, "timestamp", received_at)
    return _measurements(doc, time, parts[2], parts[1], topic)


def decode_asset(topic: str, payload: bytes, received_at: datetime | None
                 ) -> tuple[str, list[Measurement | Event], list[CodecError]]:
    """Returns ``(event_id, records, errors)``."""
    doc = parse_json(payload)
    header = doc.get("header")
    if not isinstance(header, dict):
        raise PayloadError("asset telemetry has no header object", reason="missing_field", field="header")
    event_id, asset_id = header.get("event_id"), header.get("asset_id")
    if not isinstance(event_id, str) or not event_id:
        raise PayloadError("header has no event_id", reason="missing_field", field="header.event_id")
    if not isinstance(asset_id, str) or not asset_id:
        raise PayloadError("header has no asset_id", reason="missing_field", field="header.asset_id")
    measurements = doc.get("measurements")
    if not isinstance(measurements, dict):
        raise PayloadError("asset telemetry has no measurements object", reason="missing_field",
                           field="measurements")
    time = _time(doc, "timestamp", received_at)
    location = doc.get("location") if isinstance(doc.get("location"), dict) else {}
    zone = location.get("market_zone") if isinstance(location.get("market_zone"), str) else None
    records, errors = _measurements(measurements, time, asset_id, zone, topic, "measurements.")
    return event_id, records, errors


def _time(doc: Mapping[str, Any], key: str, received_at: datetime | None) -> datetime:
    if key in doc:
        return parse_time(doc[key], key)
    if received_at is None:
        raise PayloadError(f"message has no {key} and no receive time was given",
                           reason="missing_field", field=key)
    return received_at
