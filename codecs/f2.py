"""F2 Smart Controller messages.

Topic: ``<cmnd|stat|tele>/f2-<mac>/<mode>/<connector>/<component>`` (connector ``1``..``4``
or ``J1``..``J4``; MAC case-insensitive, stored lower case; device id ``f2-<mac>``).

- ``sensor-<N>``: JSON ``{"timestamp": naive UTC, "data": hex}`` (spaced or plain hex), or
  raw binary when the pin's template says ``payload = "binary"``; the bytes are cut by the
  template the registry attaches to (MAC, connector, pin N).
- strike, door sensors, reader, exit buttons, motion, siren, status: JSON to measurements
  (a strike command seen on the bus, ``{"power-flag": .., "period": ..}``, yields nothing)
  (booleans and enumerations as numbers, the mapping declared below); a card read is an
  event. A field that cannot be read is an error for that field; the rest still decode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from edge.codecs.errors import CodecError, PayloadError, RegistryError, TopicError, ValueError_
from edge.codecs.limits import as_float
from edge.codecs.records import CardRead, Event, Measurement
from edge.codecs.registry import Registry
from edge.codecs.template import CompiledTemplate

KINDS = frozenset({"cmnd", "stat", "tele"})
MODES = frozenset({"access-control-mode", "alarm-mode", "sensor-mode"})
_COMPONENT = re.compile(r"^(sensor|strike|reader|siren|motion-sensor)-(\d+)$|^(door-sensors|exit-buttons|status)$")
_MAC = re.compile(r"^f2-([0-9a-fA-F]{12})$")
_CONNECTOR = re.compile(r"^[Jj]?([1-4])$")

# Enumerations of the component messages: text on the wire -> number in the record.
STRIKE_STATES = {"locked": 0, "unlocked": 1, "pulsing": 2}
DOOR_STATES = {"closed": 0, "open": 1}
SIREN_STATES = {"inactive": 0, "active": 1}
SIREN_PATTERNS = {"steady": 0, "pulsing": 1, "wail": 2, "yelp": 3}


@dataclass(frozen=True, slots=True)
class F2Topic:
    topic: str
    kind: str
    mac: str
    device_id: str
    mode: str
    connector: int
    component: str
    position: int | None


@lru_cache(maxsize=8192)
def parse_topic(topic: str) -> F2Topic:
    """Parse and check an F2 topic; cached, since a site has a few hundred distinct ones."""
    parts = topic.split("/")
    if len(parts) != 5:
        raise TopicError(f"an F2 topic has 5 segments, this one has {len(parts)}", topic=topic)
    kind, device, mode, connector, component = parts
    if kind not in KINDS:
        raise TopicError(f"type segment {kind!r} is not cmnd, stat or tele", topic=topic, field="type")
    mac = _MAC.match(device)
    if not mac:
        raise TopicError(f"device segment {device!r} is not f2-<12 hex digits>", topic=topic,
                         field="device")
    if mode not in MODES:
        raise TopicError(f"mode {mode!r} is not one of {', '.join(sorted(MODES))}", topic=topic,
                         field="mode")
    conn = _CONNECTOR.match(connector)
    if not conn:
        raise TopicError(f"connector {connector!r} is not 1-4 or J1-J4", topic=topic, field="connector")
    comp = _COMPONENT.match(component)
    if not comp:
        raise TopicError(f"unknown component {component!r}", topic=topic, field="component")
    name = comp.group(1) or comp.group(3)
    position = int(comp.group(2)) if comp.group(2) else None
    mac_lower = mac.group(1).lower()
    return F2Topic(topic, kind, mac_lower, f"f2-{mac_lower}", mode, int(conn.group(1)), name, position)


def parse_time(value: Any, field: str = "timestamp") -> datetime:
    """A naive ``YYYY-MM-DD HH:MM:SS.ffffff`` is UTC; an explicit offset is honoured."""
    if not isinstance(value, str):
        raise PayloadError(f"{field} must be a string, got {type(value).__name__}",
                           reason="bad_timestamp", field=field)
    try:
        t = datetime.fromisoformat(value)
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(f"{field} {value[:40]!r} is not an ISO 8601 time",
                           reason="bad_timestamp", field=field) from exc


def parse_json(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        pos = getattr(exc, "pos", getattr(exc, "start", None))
        raise PayloadError(f"payload is not JSON: {exc}", reason="bad_json", offset=pos) from exc
    except RecursionError as exc:
        raise PayloadError("payload JSON is nested too deeply", reason="bad_json") from exc
    if not isinstance(doc, dict):
        raise PayloadError(f"payload is JSON {type(doc).__name__}, expected an object",
                           reason="bad_json", offset=0)
    return doc


def parse_hex(text: Any) -> bytes:
    if not isinstance(text, str):
        raise PayloadError(f"data must be a hex string, got {type(text).__name__}",
                           reason="bad_hex", field="data")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        match = re.search(r"position (\d+)", str(exc))
        raise PayloadError(f"data is not hex: {exc}", reason="bad_hex", field="data",
                           offset=int(match.group(1)) if match else None) from exc


class F2Codec:
    """Decodes F2 messages with a registry. Thread-safe after construction."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._compiled: dict[str, CompiledTemplate] = {
            t.name: CompiledTemplate(t) for t in registry.templates
        }

    def compiled(self, name: str) -> CompiledTemplate:
        return self._compiled[name]

    def template_for(self, t: F2Topic) -> CompiledTemplate:
        pin = self.registry.pin(t.mac, t.connector, t.position or 0)
        if pin is None:
            raise RegistryError(
                f"no sensor registered at controller {t.mac} connector {t.connector} "
                f"pin {t.position}", reason="unknown_device", topic=t.topic, field="component")
        return self._compiled[pin.template]

    def decode(self, topic: str, payload: bytes, received_at: datetime | None
               ) -> tuple[list[Measurement | Event], list[CodecError]]:
        t = parse_topic(topic)
        if t.component == "sensor":
            return self._sensor(t, payload, received_at)
        doc = parse_json(payload)
        time = parse_time(doc["timestamp"]) if "timestamp" in doc else _required(received_at)
        handler = _COMPONENTS[t.component]
        return handler(t, doc, time)

    def _sensor(self, t: F2Topic, payload: bytes, received_at: datetime | None
                ) -> tuple[list[Measurement | Event], list[CodecError]]:
        compiled = self.template_for(t)
        if compiled.template.payload == "binary":
            data, time = payload, _required(received_at)
        else:
            doc = parse_json(payload)
            if "data" not in doc:
                raise PayloadError("sensor payload has no 'data'", reason="missing_field", field="data")
            data = parse_hex(doc["data"])
            time = parse_time(doc["timestamp"]) if "timestamp" in doc else _required(received_at)
        values, errors = compiled.decode(data)
        records: list[Measurement | Event] = [
            Measurement(time, t.device_id, t.mode, t.connector, t.position, label, value, unit, t.topic)
            for label, value, unit in values
        ]
        return records, errors


def _required(received_at: datetime | None) -> datetime:
    if received_at is None:
        raise PayloadError("message has no timestamp and no receive time was given",
                           reason="missing_field", field="timestamp")
    return received_at


Decoded = tuple[list[Measurement | Event], list[CodecError]]
Converter = Callable[[Any], float]


def _number(value: Any) -> float:
    number = as_float(value)
    if number is None:
        raise TypeError(f"expected a finite number, got {value!r}"[:120])
    return number


def _boolean(value: Any) -> float:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}"[:120])
    return 1.0 if value else 0.0


def _enum(table: Mapping[str, int]) -> Converter:
    def convert(value: Any) -> float:
        if value not in table:
            raise TypeError(f"{value!r} is not one of {', '.join(table)}"[:120])
        return float(table[value])
    return convert


def _zone(value: Any) -> float:
    match = re.fullmatch(r"zone_(\d+)", value) if isinstance(value, str) else None
    if not match:
        raise TypeError(f"zone {value!r} is not zone_<N>"[:120])
    return float(match.group(1))


def _fields(t: F2Topic, doc: Mapping[str, Any], time: datetime,
            spec: Mapping[str, tuple[Converter, str | None]], position: int | None = None,
            required: tuple[str, ...] = ()) -> Decoded:
    """Measurements for the fields of ``spec`` present in ``doc``; errors for bad ones."""
    records: list[Measurement | Event] = []
    errors: list[CodecError] = []
    for key in required:
        if key not in doc:
            errors.append(PayloadError(f"{t.component} message has no {key!r}",
                                       reason="missing_field", field=key, topic=t.topic))
    pos = t.position if position is None else position
    for key, value in doc.items():
        if key == "timestamp" or key not in spec:
            continue
        convert, unit = spec[key]
        try:
            number = convert(value)
        except TypeError as exc:
            errors.append(ValueError_(f"{key}: {exc}", field=key, topic=t.topic))
            continue
        records.append(Measurement(time, t.device_id, t.mode, t.connector, pos, key, number, unit, t.topic))
    return records, errors


def _strike(t: F2Topic, doc: Mapping[str, Any], time: datetime) -> Decoded:
    if "power-flag" in doc and "state" not in doc:
        # A strike *command* ({"power-flag": 2, "period": 3}) on the bus, e.g. the gateway's
        # own downlink on cmnd/...: not a report, nothing to record.
        return [], []
    return _fields(t, doc, time, {"state": (_enum(STRIKE_STATES), None),
                                  "voltage": (_number, "V"), "current": (_number, "A")},
                   required=("state",))


def _doors(t: F2Topic, doc: Mapping[str, Any], time: datetime) -> Decoded:
    spec: dict[str, tuple[Converter, str | None]] = {
        k: (_enum(DOOR_STATES), None) for k in doc if re.fullmatch(r"door_\d+", k)
    }
    spec["tamper"] = (_boolean, None)
    return _fields(t, doc, time, spec)


def _exit_buttons(t: F2Topic, doc: Mapping[str, Any], time: datetime) -> Decoded:
    button = doc.get("button_id")
    if isinstance(button, bool) or not isinstance(button, int):
        return [], [ValueError_(f"button_id must be an integer, got {button!r}",
                                field="button_id", topic=t.topic)]
    return _fields(t, doc, time, {"button_pressed": (_boolean, None)}, position=button,
                   required=("button_pressed",))


def _motion(t: F2Topic, doc: Mapping[str, Any], time: datetime) -> Decoded:
    return _fields(t, doc, time, {"motion_detected": (_boolean, None),
                                  "sensitivity": (_number, None), "zone": (_zone, None)},
                   required=("motion_detected",))


def _siren(t: F2Topic, doc: Mapping[str, Any], time: datetime) -> Decoded:
    return _fields(t, doc, time, {"state": (_enum(SIREN_STATES), None), "volume": (_number, "%"),
                                  "pattern": (_enum(SIREN_PATTERNS), None)}, required=("state",))


def _status(t: F2Topic, doc: Mapping[str, Any], time: datetime) -> Decoded:
    return _fields(t, doc, time, {"status": (_boolean, None)}, required=("status",))


def _reader(t: F2Topic, doc: Mapping[str, Any], time: datetime) -> Decoded:
    card = doc.get("card_id")
    if not isinstance(card, str) or not card:
        return [], [PayloadError("reader message has no card_id string", reason="missing_field",
                                 field="card_id", topic=t.topic)]
    strength = doc.get("signal_strength")
    number = as_float(strength)
    if strength is not None and number is None:
        return [], [ValueError_(f"signal_strength must be a finite number, got {strength!r}"[:200],
                                field="signal_strength", topic=t.topic)]
    read_type = doc.get("read_type")
    event = CardRead(time, t.device_id, t.topic, t.mode, t.connector, t.position, card,
                     read_type if isinstance(read_type, str) else None, number)
    return [event], []


_COMPONENTS: dict[str, Callable[[F2Topic, Mapping[str, Any], datetime], Decoded]] = {
    "strike": _strike, "door-sensors": _doors, "exit-buttons": _exit_buttons,
    "motion-sensor": _motion, "siren": _siren, "status": _status, "reader": _reader,
}
