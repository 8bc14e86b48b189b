"""The records the server's actors exchange through Apache Kafka. Pure: no I/O.

Topics (names configurable in ``[kafka]``):

- ``decoded_iot_data``: measurements. One Kafka message per device and source batch,
  key = device id (so a device's records stay in order on one partition), value =
  msgpack ``{"v": 1, "src": <source prefix>, "r": [[n, time_us, device_id,
  connector_mode, connector, pin_position, label, value, unit, topic], ...]}``. A
  record's source identity is ``<src>/<n>``: ``gw-1/17/4711`` (gateway, boot epoch,
  sequence) or ``kafka:raw_iot_data/2/881/0`` (the raw record it was decoded from, and
  its index). Grouping keeps Kafka's per-message cost off the per-record path.
- ``device_events``: one JSON message per event (hello, status, command acks, OTA, card
  reads, gateway gap records), key = device id (the gateway id for gaps), with
  ``"key"`` (the event's identity, unique downstream) and ``"gateway"``.
- ``raw_iot_data`` (and the bridge's other raw topics): the device's payload bytes as
  they came, with headers: ``mqtt_topic``, ``received_at`` (ISO 8601 UTC), ``broker``
  or ``gateway``, ``source``; quarantined messages from gateways add ``reason`` and
  ``detail``.
- ``<topic>.dlq``: what could not be decoded or stored: the original value and headers,
  plus ``dlq_reason``, ``dlq_field``, ``dlq_detail``, ``dlq_source`` (topic/partition/offset).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from edge.codecs.errors import CodecError
from edge.codecs.records import Event, Gap, Measurement, Quarantined, iso
from edge.codecs.uplink import Batch

VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers

    @property
    def size(self) -> int:
        return len(self.value)


@dataclass(frozen=True, slots=True)
class Topics:
    decoded: str = "decoded_iot_data"
    raw: str = "raw_iot_data"
    events: str = "device_events"


class StreamError(CodecError):
    """A Kafka record that is not what its topic carries."""


def _us(t: datetime) -> int:
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def measurements(src: str, numbered: Iterable[tuple[int, Measurement]], topic: str) -> list[Message]:
    """Group ``(n, measurement)`` by device: one message per device."""
    by_device: dict[str, list[list[Any]]] = {}
    times: dict[datetime, int] = {}
    for n, m in numbered:
        us = times.get(m.time)
        if us is None:
            us = times[m.time] = _us(m.time)
        by_device.setdefault(m.device_id, []).append(
            [n, us, m.device_id, m.connector_mode, m.connector, m.pin_position, m.label, m.value,
             m.unit, m.topic])
    return [Message(topic, device.encode(), msgpack.packb({"v": VERSION, "src": src, "r": rows}), [])
            for device, rows in by_device.items()]


Row = tuple[datetime, str, str, int | None, int, str, float, str | None, str | None, str]


def read_measurements(value: bytes) -> list[Row]:
    """The rows of one ``decoded_iot_data`` message, in ``iot_measurements`` column order:
    time, device_id, connector_mode ('' for none), connector, pin_position (0 for none),
    label, value, unit, topic, source."""
    try:
        doc = msgpack.unpackb(value)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StreamError(f"not msgpack: {exc}", reason="bad_envelope") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise StreamError(f"not a v{VERSION} measurements envelope", reason="bad_envelope", field="v")
    src, rows = doc.get("src"), doc.get("r")
    if not isinstance(src, str) or not isinstance(rows, list):
        raise StreamError("envelope needs src (str) and r (list)", reason="bad_envelope", field="r")
    # The sink's hot path (about 0.7 µs a row): the records of one device message mostly
    # share their timestamps, so each distinct time becomes a datetime once.
    out: list[Row] = []
    append, times, prefix = out.append, {}, src + "/"
    for i, r in enumerate(rows):
        try:
            n, us, device, mode, connector, pin, label, val, unit, topic = r
            t = times.get(us)
            if t is None:
                t = times[us] = _EPOCH + timedelta(0, 0, us)
            append((t, device, mode or "", connector, pin or 0, label, float(val), unit, topic,
                    prefix + str(n)))
        except (TypeError, ValueError, OverflowError) as exc:
            raise StreamError(f"record {i}: {exc}", reason="bad_record", field=f"r[{i}]") from None
    return out


def event(record: Event | Gap, key: str, gateway: str | None, topic: str) -> Message:
    doc = record.to_json()
    device = getattr(record, "device_id", None) or gateway or ""
    doc.update(key=key, gateway=gateway, device_id=device)
    return Message(topic, device.encode(), json.dumps(doc, ensure_ascii=False, default=str).encode(), [])


def read_event(value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StreamError(f"not JSON: {exc}", reason="bad_event") from None
    if not isinstance(doc, dict):
        raise StreamError("an event is a JSON object", reason="bad_event")
    for key in ("key", "type", "time", "device_id"):
        if not isinstance(doc.get(key), str):
            raise StreamError(f"event without {key}", reason="bad_event", field=key)
    return doc


def raw(topic: str, mqtt_topic: str, payload: bytes, received_at: datetime, key: str | None,
        **meta: str | None) -> Message:
    headers = [("mqtt_topic", mqtt_topic.encode()), ("received_at", iso(received_at).encode())]
    headers += [(k, v.encode()) for k, v in meta.items() if v is not None]
    return Message(topic, key.encode() if key else None, payload, headers)


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode("utf-8", "replace")
    return None


def dead_letter(topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None,
                partition: int, offset: int, reason: str, detail: str, field: str | None = None,
                suffix: str = ".dlq") -> Message:
    out = [(k, v) for k, v in headers or () if not k.startswith("dlq_")]
    out += [("dlq_reason", reason.encode()), ("dlq_detail", detail[:2000].encode()),
            ("dlq_source", f"{topic}/{partition}/{offset}".encode())]
    if field:
        out.append(("dlq_field", field.encode()))
    return Message(topic + suffix, key, value, out)


def from_batch(batch: Batch, topics: Topics) -> list[Message]:
    """Everything in one uplink batch, as Kafka messages (measurements grouped by device)."""
    gw, boot = batch.gateway_id, batch.boot_epoch
    src = f"{gw}/{boot}"
    numbered: list[tuple[int, Measurement]] = []
    out: list[Message] = []
    for seq, r in zip(batch.seqs, batch.records, strict=True):
        if type(r) is Measurement:
            numbered.append((seq, r))
        elif type(r) is Quarantined:
            device = r.topic.split("/")[1] if r.topic.count("/") >= 1 else None
            out.append(raw(topics.raw, r.topic, r.payload, r.time, device, gateway=gw,
                           source=f"{src}/{seq}", reason=r.reason, detail=r.message[:2000]))
        else:
            out.append(event(r, f"{src}/{seq}", gw, topics.events))
    out[:0] = measurements(src, numbered, topics.decoded)
    return out
