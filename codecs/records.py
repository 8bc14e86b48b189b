"""What decoding produces: one record type for measurements, typed events for the rest.

``Measurement`` is a NamedTuple rather than a dataclass: it is built once per value on the
hot path (a tuple is the cheapest immutable object Python makes) and packs to msgpack as
is. Events are rarer and are frozen dataclasses. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple


class Measurement(NamedTuple):
    time: datetime
    device_id: str
    connector_mode: str | None
    connector: int | None
    pin_position: int | None
    label: str
    value: float
    unit: str | None
    topic: str | None

    def to_json(self) -> dict[str, Any]:
        """The ``edge decode`` form: exactly these keys, time as ISO 8601 UTC with ``Z``."""
        doc = self._asdict()
        doc["time"] = iso(self.time)
        return doc


@dataclass(frozen=True, slots=True)
class Event:
    """Base of typed events. ``type`` names the event in JSON and on the wire."""

    type: ClassVar[str] = "event"
    time: datetime
    device_id: str
    topic: str | None

    def to_json(self) -> dict[str, Any]:
        doc = {"type": self.type, **asdict(self)}
        doc["time"] = iso(self.time)
        return doc


@dataclass(frozen=True, slots=True)
class Hello(Event):
    type: ClassVar[str] = "hello"
    seq: int | None
    fw_version: str
    uptime_s: int
    broker_connections: int
    buf_usage_pct: float
    temp_internal: float | None = None


@dataclass(frozen=True, slots=True)
class Status(Event):
    type: ClassVar[str] = "status"
    seq: int | None
    status: str  # "online" | "offline"


@dataclass(frozen=True, slots=True)
class CommandAck(Event):
    type: ClassVar[str] = "command_ack"
    seq: int | None
    cmd_id: str
    result: str  # accepted | rejected | error | unsupported
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OtaStatus(Event):
    type: ClassVar[str] = "ota_status"
    seq: int | None
    cmd_id: str
    ota_state: str  # downloading -> verifying -> applying -> success | failed
    progress_pct: float | None = None
    fw_version_target: str | None = None


@dataclass(frozen=True, slots=True)
class CardRead(Event):
    """An F2 reader saw a card: an access event, not a measurement."""

    type: ClassVar[str] = "card_read"
    connector_mode: str
    connector: int
    position: int | None
    card_id: str
    read_type: str | None = None
    signal_strength: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceGap(Event):
    """Messages of a v2 device that never reached the gateway: ``count`` of them, sequence
    numbers ``first_missing`` on, found when ``seq`` arrived (``time``: when the gateway
    received that message).
    ``reason``: ``gap`` (numbers skipped) or ``reboot`` (the start of a new boot lost,
    its hello among them). Made by the gateway's decoder and sent upstream like any event."""

    type: ClassVar[str] = "device_gap"
    seq: int
    first_missing: int
    count: int
    reason: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (Hello, Status, CommandAck, OtaStatus, CardRead, DeviceGap)
}


def identity(record: Event) -> str:
    """An event's identity wherever it travels: ``<device>/<type>/<device time>/<digest of
    everything else but the topic>``. The same event redelivered after a crash, resent, or
    published to both the site and the central broker has one identity, so it is stored
    once; two events that differ in anything but their topic have two."""
    doc = record.to_json()
    doc.pop("topic", None)
    return f"{record.device_id}/{record.type}/{doc['time']}/{_digest(doc)}"


def quarantine_identity(record: Quarantined) -> str:
    """A quarantined message's identity: a digest of its topic, the payload as kept and
    why it was kept. The same bad message redelivered is kept once."""
    return "q/" + _digest([record.topic, record.payload.hex(), record.reason, record.message])


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def iso(t: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; microseconds only when there are some."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Quarantined(NamedTuple):
    """A message that could not be decoded, kept raw with its reason and forwarded."""

    time: datetime
    topic: str
    payload: bytes
    reason: str
    message: str
    field: str | None
    offset: int | None

    def to_json(self) -> dict[str, Any]:
        return {"type": "quarantined", "time": iso(self.time), "topic": self.topic,
                "payload_hex": self.payload.hex(), "reason": self.reason, "message": self.message,
                "field": self.field, "offset": self.offset}


class Gap(NamedTuple):
    """The gateway dropped records (quota, drop-oldest): sequences first..last, ``count``
    of them telemetry. Travels upstream with priority so the loss is visible."""

    time: datetime
    first_seq: int
    last_seq: int
    count: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "gap", "time": iso(self.time), "first_seq": self.first_seq,
                "last_seq": self.last_seq, "count": self.count, "reason": self.reason}
