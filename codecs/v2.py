"""Metering devices, protocol v2: ``iot/{device_id}/telemetry|hello|status|command/ack|ota/status``.

Envelope on every message: ``v`` (2), ``device_id`` (must match the topic), ``ts``
(ISO 8601 UTC), ``seq`` (0..2**32-1), ``msg_type`` (must match the topic). v1 messages
(no ``seq``/``msg_type``) are accepted and never deduplicated.

``SequenceTracker`` is the pure dedup/gap logic the actors use with the envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, NamedTuple

from edge.codecs.errors import CodecError, PayloadError, TopicError, ValueError_
from edge.codecs.f2 import parse_json, parse_time
from edge.codecs.limits import as_float
from edge.codecs.records import CommandAck, Event, Hello, Measurement, OtaStatus, Status

MAX_MEASUREMENTS = 200
SEQ_MOD = 2**32
TOPIC_TYPES = {
    "telemetry": "telemetry", "hello": "hello", "status": "status",
    "command/ack": "command_ack", "ota/status": "ota_status",
}
ACK_RESULTS = frozenset({"accepted", "rejected", "error", "unsupported"})
OTA_STATES = frozenset({"downloading", "verifying", "applying", "success", "failed"})


class Envelope(NamedTuple):  # a tuple: built for every message, a frozen dataclass costs 4x
    v: int
    device_id: str
    ts: datetime
    ts_text: str
    seq: int | None
    msg_type: str


def topic_type(topic: str) -> tuple[str, str]:
    """(device_id, msg_type) from a v2 topic."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != "iot" or not parts[1]:
        raise TopicError("a v2 topic is iot/<device_id>/<kind>", topic=topic)
    kind = "/".join(parts[2:])
    if kind not in TOPIC_TYPES:
        raise TopicError(f"v2 topic kind {kind!r} is not one of {', '.join(TOPIC_TYPES)}",
                         topic=topic, field="kind")
    return parts[1], TOPIC_TYPES[kind]


def envelope(doc: Mapping[str, Any], topic: str) -> Envelope:
    device, msg_type = topic_type(topic)
    v = doc.get("v", 1)
    if isinstance(v, bool) or v not in (1, 2):
        raise PayloadError(f"protocol version v={v!r} is not 1 or 2", reason="bad_version", field="v")
    device_id = doc.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise PayloadError("envelope has no device_id string", reason="missing_field", field="device_id")
    if device_id != device:
        raise PayloadError(f"device_id {device_id!r} does not match the topic's {device!r}",
                           reason="device_mismatch", field="device_id")
    if "ts" not in doc:
        raise PayloadError("envelope has no ts", reason="missing_field", field="ts")
    ts = parse_time(doc["ts"], "ts")
    seq = doc.get("seq")
    if v == 2 and msg_type == "status" and "seq" not in doc and "msg_type" not in doc:
        # docs/protocols.md: the status message doubles as the Last Will, whose payload is fixed
        # when the device connects; it carries neither seq nor msg_type. Never deduplicated.
        return Envelope(v, device_id, ts, doc["ts"], None, msg_type)
    if v == 2:
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < SEQ_MOD:
            raise PayloadError(f"seq must be an integer 0..2**32-1, got {seq!r}",
                               reason="bad_seq", field="seq")
        declared = doc.get("msg_type")
        if declared != msg_type:
            raise PayloadError(f"msg_type {declared!r} does not match the topic's {msg_type!r}",
                               reason="bad_msg_type", field="msg_type")
    else:
        seq = None
    return Envelope(v, device_id, ts, doc["ts"], seq, msg_type)


def decode(topic: str, payload: bytes) -> tuple[Envelope, list[Measurement | Event], list[CodecError]]:
    doc = parse_json(payload)
    env = envelope(doc, topic)
    match env.msg_type:
        case "telemetry":
            records, errors = _telemetry(env, doc, topic)
            return env, records, errors
        case "hello":
            event: Event = Hello(env.ts, env.device_id, topic, env.seq,
                                 _str(doc, "fw_version"), int(_num(doc, "uptime_s")),
                                 int(_num(doc, "broker_connections")), _num(doc, "buf_usage_pct"),
                                 _num(doc, "temp_internal", optional=True))
        case "status":
            status = doc.get("status")
            if status not in ("online", "offline"):
                raise PayloadError(f"status {status!r} is not online or offline",
                                   reason="bad_value", field="status")
            event = Status(env.ts, env.device_id, topic, env.seq, status)
        case "command_ack":
            result = _str(doc, "result")
            if result not in ACK_RESULTS:
                raise PayloadError(f"result {result!r} is not one of {', '.join(sorted(ACK_RESULTS))}",
                                   reason="bad_value", field="result")
            detail = doc.get("detail")
            event = CommandAck(env.ts, env.device_id, topic, env.seq, _str(doc, "cmd_id"), result,
                               detail if isinstance(detail, str) else None)
        case _:  # ota_status
            state = _str(doc, "ota_state")
            if state not in OTA_STATES:
                raise PayloadError(f"ota_state {state!r} is not one of {', '.join(sorted(OTA_STATES))}",
                                   reason="bad_value", field="ota_state")
            target = doc.get("fw_version_target")
            event = OtaStatus(env.ts, env.device_id, topic, env.seq, _str(doc, "cmd_id"), state,
                              _num(doc, "progress_pct", optional=True),
                              target if isinstance(target, str) else None)
    return env, [event], []


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise PayloadError(f"{key} must be a string, got {value!r}", reason="missing_field"
                           if value is None else "bad_type", field=key)
    return value


def _num(doc: Mapping[str, Any], key: str, optional: bool = False) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    number = as_float(value)
    if number is None:
        raise PayloadError(f"{key} must be a finite number, got {value!r}"[:200],
                           reason="missing_field" if value is None else "bad_type", field=key)
    return number


def _telemetry(env: Envelope, doc: Mapping[str, Any], topic: str
               ) -> tuple[list[Measurement | Event], list[CodecError]]:
    items = doc.get("measurements")
    if not isinstance(items, list):
        raise PayloadError("telemetry has no measurements list", reason="missing_field",
                           field="measurements")
    if len(items) > MAX_MEASUREMENTS:
        raise PayloadError(f"{len(items)} measurements, at most {MAX_MEASUREMENTS} allowed",
                           reason="too_many", field="measurements")
    records: list[Measurement | Event] = []
    errors: list[CodecError] = []
    for i, item in enumerate(items):
        field = f"measurements[{i}]"
        try:
            if not isinstance(item, dict):
                raise ValueError_("a measurement must be an object", field=field)
            kind, val, unit = item.get("type"), item.get("val"), item.get("unit")
            if not isinstance(kind, str) or not kind:
                raise ValueError_("measurement has no type", field=f"{field}.type")
            number = as_float(val)
            if number is None:
                raise ValueError_(f"val must be a finite number, got {val!r}"[:200], field=f"{field}.val")
            time = parse_time(item["ts"], f"{field}.ts") if "ts" in item else env.ts
            records.append(Measurement(time, env.device_id, None, None, None, kind, number,
                                       unit if isinstance(unit, str) else None, topic))
        except CodecError as exc:
            errors.append(exc.at(topic))
    return records, errors


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    REBOOT = "reboot"  # new, and the device restarted its sequence
    JUMP = "jump"  # new, but ahead by more than any plausible loss: not counted as a gap


@dataclass(frozen=True, slots=True)
class SeqResult:
    verdict: Verdict
    gap: int = 0  # messages missing between the last seen and this one

    @property
    def is_new(self) -> bool:
        return self.verdict is not Verdict.DUPLICATE


_NEW, _DUPLICATE = SeqResult(Verdict.NEW), SeqResult(Verdict.DUPLICATE)  # the usual answers, shared
_JUMP = SeqResult(Verdict.JUMP)


_CLOCK_FROM = datetime(2001, 1, 1, tzinfo=UTC)  # a ts before this is an uptime, not a clock


def _repeat(ts: str, last_ts: str | None, known: bool) -> bool:
    if known:
        return True
    try:
        t = datetime.fromisoformat(ts)
    except ValueError:
        return False
    if t.tzinfo is None or t < _CLOCK_FROM:
        return False  # no real clock: only the very same bytes make a repeat
    if last_ts is None:
        return True  # state from before last_ts was kept: as before, a repeat
    try:
        return t <= datetime.fromisoformat(last_ts)
    except (ValueError, TypeError):
        return True


class SequenceTracker:
    """Per-device dedup and gap counting for v2 ``seq`` (wraps at 2**32, 0 after a reboot).

    Ahead of the last seen seq by one is new; by more, a gap (counted, kept); by more than
    ``max_gap``, a jump (kept, counted once: a device that reset its counter or sent a wild
    seq has not lost two billion messages). At or behind the last seq (within
    ``replay_window``, modulo 2**32) it is a repeat, and dropped, only when

    - ``known``: the owner saw these very bytes recently (``edge.codecs.batch.Recent``: a
      redelivery after a crash, a device's own retransmission), or
    - the device has a real clock and ``ts`` is not newer than the last message's: a
      redelivery carries its original time.

    Otherwise it is the first message of a boot whose hello was lost or unreadable, and kept
    (``REBOOT``, its lower sequence numbers counted as missing). A device without a clock
    (``ts`` before 2001, e.g. ``1970-01-01T00:00:05Z`` after every start) is thus never
    dropped for its time alone. Further behind than the window: a reboot. Not thread-safe:
    one owner (the decoder actor). ``state()`` and ``restore()`` let the owner persist it.
    """

    def __init__(self, replay_window: int = 4096, max_gap: int = 1_000_000) -> None:
        self.replay_window, self.max_gap = replay_window, max_gap
        self._last: dict[str, tuple[int, str | None]] = {}  # device -> (seq, ts of that message)

    def observe(self, device_id: str, seq: int, ts: str, known: bool = False) -> SeqResult:
        previous = self._last.get(device_id)
        if previous is None:
            self._last[device_id] = (seq, ts)
            return _NEW
        last, last_ts = previous
        ahead = (seq - last) % SEQ_MOD
        if 0 < ahead < SEQ_MOD // 2:
            self._last[device_id] = (seq, ts)
            if ahead == 1:
                return _NEW
            return SeqResult(Verdict.NEW, gap=ahead - 1) if ahead <= self.max_gap else _JUMP
        if (SEQ_MOD - ahead) % SEQ_MOD <= self.replay_window and _repeat(ts, last_ts, known):
            return _DUPLICATE
        self._last[device_id] = (seq, ts)
        return SeqResult(Verdict.REBOOT, gap=seq)  # seq 0..seq-1 of the new boot are missing

    def last(self, device_id: str) -> tuple[int, str | None] | None:
        """(last seq, its ts) of one device, as ``state()`` holds it."""
        return self._last.get(device_id)

    def state(self) -> dict[str, tuple[int, str | None]]:
        return dict(self._last)

    def restore(self, state: Mapping[str, tuple[int, str | None]]) -> None:
        self._last = {k: (int(v[0]), v[1]) for k, v in state.items()}
