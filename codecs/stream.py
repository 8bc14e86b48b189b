"""The records the server's actors exchange through Apache Kafka. Pure: no I/O.

Topics (names configurable in ``[kafka]``):

- ``decoded_iot_data``: measurements. One Kafka message per device and source batch
  (split in parts of at most ``MAX_MESSAGE`` bytes, below Kafka's message size), key =
  device id (so a device's records stay in order on one partition), value =
  msgpack ``{"v": 1, "src": <source prefix>, "r": [[n, time_us, device_id,
  connector_mode, connector, pin_position, label, value, unit, topic], ...]}``. A
  record's source identity is ``<src>/<n>``: ``gw-1/17/4711`` (gateway, boot epoch,
  sequence) or ``kafka:raw_iot_data/2/881/0`` (the raw record it was decoded from, and
  its index). Grouping keeps Kafka's per-message cost off the per-record path.
- ``device_events``: one JSON message per event (hello, status, command acks, OTA, card
  reads, gateway gap records), key = device id (the gateway id for gaps), with
  ``"key"`` (the event's identity, unique downstream: ``codecs.records.identity``, the
  same whichever path brought it; ``<gateway>/<boot>/<seq>`` for a gap) and ``"gateway"``.
- ``raw_iot_data`` (and the bridge's other raw topics): the device's payload bytes as
  they came, with headers: ``mqtt_topic``, ``received_at`` (ISO 8601 UTC), ``broker``
  or ``gateway``, ``source``; quarantined messages from gateways add ``reason`` and
  ``detail``.
- ``<topic>.dlq``: what could not be decoded or stored: the original value and headers,
  plus ``dlq_reason``, ``dlq_field``, ``dlq_detail``, ``dlq_source`` (topic/partition/offset).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgpack

from edge.codecs.errors import CodecError
from edge.codecs.limits import INT8, MAX_DETAIL, bounded_payload, check_measurement, safe_text, text_problem
from edge.codecs.records import Event, Gap, Measurement, Quarantined, identity, iso
from edge.codecs.uplink import Batch

VERSION = 1
# Bytes of one produced message at most: half of Kafka's default message.max.bytes (1 MiB),
# which is also what the server creates its topics with (edge.io.kafka.ensure_topics).
MAX_MESSAGE = 512 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Outgoing:
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


def measurements(src: str, numbered: Iterable[tuple[int, Measurement]], topic: str,
                 max_bytes: int = MAX_MESSAGE) -> list[Outgoing]:
    """Group ``(n, measurement)`` by device: one message per device, split in parts when
    it would exceed ``max_bytes``."""
    by_device: dict[str, list[list[Any]]] = {}
    times: dict[datetime, int] = {}
    for n, m in numbered:
        us = times.get(m.time)
        if us is None:
            us = times[m.time] = _us(m.time)
        by_device.setdefault(m.device_id, []).append(
            [n, us, m.device_id, m.connector_mode, m.connector, m.pin_position, m.label, m.value,
             m.unit, m.topic])
    return [Outgoing(topic, device.encode(), value, [])
            for device, rows in by_device.items() for value in _envelopes(src, rows, max_bytes)]


def _envelopes(src: str, rows: list[list[Any]], max_bytes: int) -> list[bytes]:
    value = msgpack.packb({"v": VERSION, "src": src, "r": rows})
    if len(value) <= max_bytes or len(rows) == 1:
        return [value]
    half = len(rows) // 2
    return _envelopes(src, rows[:half], max_bytes) + _envelopes(src, rows[half:], max_bytes)


Row = tuple[datetime, str, str, int | None, int, str, float, str | None, str | None, str]


class Parsed(NamedTuple):
    """One ``decoded_iot_data`` message: its good rows, and each bad row on its own
    (a one-row envelope to dead-letter, and why it is bad)."""

    rows: list[Row]
    bad: list[tuple[bytes, StreamError]]


def read_measurements(value: bytes) -> Parsed:
    """The rows of one ``decoded_iot_data`` message, in ``iot_measurements`` column order:
    time, device_id, connector_mode ('' for none), connector, pin_position (0 for none),
    label, value, unit, topic, source. Every row is checked as the gateway's codecs check
    a record (``edge.codecs.limits``): a row the database could not take comes back in
    ``bad``, and the rows beside it are kept. A value that is no envelope at all raises."""
    try:
        # Text that is not UTF-8 comes through escaped, so the row check finds it in its row.
        doc = msgpack.unpackb(value, unicode_errors="surrogateescape")
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
    bad: list[tuple[bytes, StreamError]] = []
    append, times, prefix = out.append, {}, src + "/"
    for i, r in enumerate(rows):
        try:
            n, us, device, mode, connector, pin, label, val, unit, topic = r
            t = times.get(us)
            if t is None:
                t = times[us] = _EPOCH + timedelta(0, 0, us)
            check_measurement((t, device, mode, connector, pin, label, val, unit, topic))
            if type(n) is not int:
                raise StreamError(f"record number {n!r} is not an integer", reason="bad_type", field="n")
            append((t, device, mode or "", connector, pin or 0, label, float(val), unit, topic,
                    prefix + str(n)))
        except CodecError as exc:
            bad.append((_one(src, r), StreamError(f"record {i}: {exc.message}", reason=exc.reason,
                                                  field=f"r[{i}].{exc.field}")))
        except (TypeError, ValueError, OverflowError) as exc:
            bad.append((_one(src, r), StreamError(f"record {i}: {exc}"[:500], reason="bad_record",
                                                  field=f"r[{i}]")))
    return Parsed(out, bad)


def _one(src: str, row: Any) -> bytes:
    return msgpack.packb({"v": VERSION, "src": src, "r": [row]}, unicode_errors="surrogateescape")


def envelope(rows: Sequence[Row]) -> bytes:
    """Rows (as ``read_measurements`` returns them) back into a measurements envelope;
    for dead letters of rows the database refused."""
    src = rows[0][9].rpartition("/")[0] if rows else ""
    return msgpack.packb({"v": VERSION, "src": src, "r": [
        [_number(r[9]), _us(r[0]), r[1], r[2] or None, r[3], r[4], r[5], r[6], r[7], r[8]]
        for r in rows]})


def _number(source: str) -> int | str:
    """The record number that ends a row's source identity (``gw-1/17/4711`` -> 4711)."""
    n = source.rpartition("/")[2]
    return int(n) if n.isdigit() else source


def event(record: Event | Gap, key: str, gateway: str | None, topic: str) -> Outgoing:
    doc = record.to_json()
    device = getattr(record, "device_id", None) or gateway or ""
    doc.update(key=key, gateway=gateway, device_id=device)
    return Outgoing(topic, device.encode(), json.dumps(doc, ensure_ascii=False, default=str).encode(), [])


def read_event(value: bytes) -> dict[str, Any]:
    """One ``device_events`` message, checked for what the sink writes from it: its key,
    type, device and an ISO 8601 time with offset; text without NUL or lone surrogates
    (``jsonb`` takes neither); integers within ``bigint``; a gap's sequences."""
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StreamError(f"not JSON: {exc}"[:500], reason="bad_event") from None
    if not isinstance(doc, dict):
        raise StreamError("an event is a JSON object", reason="bad_event")
    for key in ("key", "type", "time", "device_id"):
        if not isinstance(doc.get(key), str):
            raise StreamError(f"event without {key}", reason="bad_event", field=key)
    try:
        t = datetime.fromisoformat(doc["time"])
    except ValueError:
        raise StreamError(f"time {doc['time'][:40]!r} is not ISO 8601", reason="bad_event",
                          field="time") from None
    if t.tzinfo is None:
        raise StreamError("time has no offset", reason="bad_event", field="time")
    _check_json(doc, "")
    if doc["type"] == "gap":
        parts = doc["key"].split("/")
        if (len(parts) < 3 or not parts[-2].isdigit() or not isinstance(doc.get("gateway"), str)
                or not all(type(doc.get(k)) is int for k in ("first_seq", "last_seq", "count"))
                or not isinstance(doc.get("reason"), str)):
            raise StreamError("a gap needs key <gateway>/<boot>/<seq>, gateway, first_seq, last_seq, "
                              "count and reason", reason="bad_event", field="key")
    if doc.get("seq") is not None and type(doc["seq"]) is not int:
        raise StreamError("seq must be an integer", reason="bad_event", field="seq")
    if doc["type"] == "status" and doc.get("status") not in ("online", "offline"):
        raise StreamError("a status is online or offline", reason="bad_event", field="status")
    return doc


def _check_json(value: Any, path: str) -> None:
    if isinstance(value, str):
        problem = text_problem(value, 64 * 1024)
        if problem:
            raise StreamError(f"{path or 'value'} {problem}", reason="bad_event", field=path or None)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT8[0] <= value <= INT8[1]:
            raise StreamError(f"{path} is beyond 64 bits", reason="bad_event", field=path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise StreamError(f"{path} is {value}", reason="bad_event", field=path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_json(k, path)
            _check_json(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]")


def device_key(topic: str) -> str:
    """The Kafka key of a device's messages, so each device's stay in order on one partition:
    ``homelab/<kind>/<device>`` -> device, ``<prefix>/<device>/...`` -> device."""
    parts = topic.split("/")
    if parts[0] == "homelab" and len(parts) > 2:
        return parts[2]
    return parts[1] if len(parts) > 1 else topic


def raw(topic: str, mqtt_topic: str, payload: bytes, received_at: datetime, key: str | None,
        **meta: str | None) -> Outgoing:
    headers = [("mqtt_topic", _header(mqtt_topic)), ("received_at", iso(received_at).encode())]
    headers += [(k, _header(v)) for k, v in meta.items() if v is not None]
    return Outgoing(topic, key.encode() if key else None, payload, headers)


def refused(message: Outgoing, reason: str, detail: str) -> Outgoing:
    """A message Kafka refuses for good (too large, invalid), for ``<topic>.dlq``: its value
    whole when it is small enough to travel, else a bounded prefix (the digest and size in
    ``dlq_detail``); the original headers kept, each bounded."""
    value, detail = bounded_payload(message.value, detail)
    headers = [(k[:256], v[:4096]) for k, v in message.headers if not k.startswith("dlq_")][:32]
    headers += [("dlq_reason", _header(reason)), ("dlq_detail", _header(detail)),
                ("dlq_source", f"{message.topic}/produce".encode())]
    return Outgoing(message.topic + ".dlq", message.key[:1024] if message.key else None, value, headers)


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode("utf-8", "replace")
    return None


def dead_letter(topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None,
                partition: int, offset: int, reason: str, detail: str, field: str | None = None,
                suffix: str = ".dlq") -> Outgoing:
    out = [(k, v) for k, v in headers or () if not k.startswith("dlq_")]
    out += [("dlq_reason", _header(reason)), ("dlq_detail", _header(detail)),
            ("dlq_source", f"{topic}/{partition}/{offset}".encode())]
    if field:
        out.append(("dlq_field", _header(field)))
    return Outgoing(topic + suffix, key, value, out)


def _header(text: str) -> bytes:
    """Header text from whatever a sender controlled (a field name with a lone surrogate,
    a NUL): escaped and bounded, never an exception."""
    return safe_text(text, MAX_DETAIL).encode()


def from_batch(batch: Batch, topics: Topics) -> list[Outgoing]:
    """Everything in one uplink batch, as Kafka messages (measurements grouped by device)."""
    gw, boot = batch.gateway_id, batch.boot_epoch
    src = f"{gw}/{boot}"
    numbered: list[tuple[int, Measurement]] = []
    out: list[Outgoing] = []
    for seq, r in zip(batch.seqs, batch.records, strict=True):
        if type(r) is Measurement:
            numbered.append((seq, r))
        elif type(r) is Quarantined:
            device = r.topic.split("/")[1] if r.topic.count("/") >= 1 else None
            out.append(raw(topics.raw, r.topic, r.payload, r.time, device, gateway=gw,
                           source=f"{src}/{seq}", reason=r.reason, detail=r.message[:2000]))
        elif type(r) is Gap:
            out.append(event(r, f"{src}/{seq}", gw, topics.events))
        else:
            out.append(event(r, identity(r), gw, topics.events))
    out[:0] = measurements(src, numbered, topics.decoded)
    return out
