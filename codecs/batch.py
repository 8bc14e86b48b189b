"""A batch of MQTT messages -> the buffer's entries, one outcome per message.

The decoding half of the gateway's Decoder actor, without its state: the v2 sequence
tracker, the counters and the logs stay with the actor, which applies them to these
outcomes in order. Pure and picklable both ways, so the actor can run it on its own
thread or in a decoder process (``[decoder] processes``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any, NamedTuple

from edge.codecs.dispatch import Dispatcher
from edge.codecs.errors import CodecError
from edge.codecs.limits import bounded_payload, safe_text
from edge.codecs.records import CommandAck, Event, Measurement, Quarantined, Status
from edge.codecs.uplink import to_wire

PRIORITY_HIGH, PRIORITY_TELEMETRY = 0, 1  # the buffer's classes: events and alarms leave first

Received = tuple[int, str, bytes, float]  # (MQTT id, topic, payload, received at, epoch seconds)


class Quarantine(NamedTuple):
    reason: str  # the first error's reason code
    detail: str  # every error, described
    entry: tuple[int, bytes]


class Outcome(NamedTuple):
    """What one message became. ``codec`` None: it did not decode at all (quarantine only)."""

    codec: str | None
    entries: tuple[tuple[int, bytes], ...]  # (priority, packed wire record), in order
    quarantine: Quarantine | None  # the raw message with its reasons (also on partial errors)
    seq: tuple[str, int, str] | None  # v2: (device, seq, ts text) for the sequence tracker
    statuses: tuple[tuple[str, str], ...]  # (device, online|offline) from status records
    device: str | None  # the first record's device: presence
    acks: tuple[tuple[str, str], ...]  # (command id, result) from command acks
    records: int


def digest(topic: str, payload: bytes) -> int:
    """A message's fingerprint: 64 bits of BLAKE2b over its topic and payload (about 0.5 µs).
    The same bytes on the same topic are the same message, however they came again."""
    h = blake2b(topic.encode("utf-8", "surrogatepass"), digest_size=8)
    h.update(b"\0")
    h.update(payload)
    return int.from_bytes(h.digest(), "little")


class Recent:
    """The fingerprints of the last ``size`` messages taken, oldest first out. The decoder
    keeps one (restored from the buffer, where it is committed with each batch) to know a
    message it has already stored when the site broker delivers it again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[int, None] = OrderedDict()

    def __contains__(self, fingerprint: int) -> bool:
        return fingerprint in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, fingerprint: int) -> None:
        seen = self._seen
        if fingerprint in seen:
            seen.move_to_end(fingerprint)
            return
        seen[fingerprint] = None
        if len(seen) > self.size:
            seen.popitem(last=False)

    def restore(self, fingerprints: Iterable[int]) -> None:
        """Oldest first, as the buffer kept them (the last ``size`` count)."""
        self._seen.clear()
        for fingerprint in list(fingerprints)[-self.size:]:
            self.add(fingerprint)


def priority_of(record: Any) -> int:
    if isinstance(record, Event):
        return PRIORITY_HIGH
    if isinstance(record, Measurement) and record.connector_mode == "alarm-mode":
        return PRIORITY_HIGH
    return PRIORITY_TELEMETRY


def quarantine(pack: Callable[[Any], bytes], topic: str, payload: bytes, received_at: datetime,
               errors: Sequence[CodecError]) -> Quarantine:
    """The raw message kept with its reasons. What a sender controls is made storable
    here: an oversized payload is kept as a bounded prefix with its digest, text with
    surrogates or NUL is escaped; the record always packs."""
    first = errors[0]
    kept, detail = bounded_payload(payload, "; ".join(e.describe() for e in errors))
    field = safe_text(first.field, 200) if first.field is not None else None
    record = Quarantined(received_at, safe_text(topic, 65_535), kept, first.reason, detail, field,
                         first.offset)
    return Quarantine(first.reason, detail, (PRIORITY_TELEMETRY, pack(to_wire(record))))


def failed(exc: BaseException) -> CodecError:
    """An error no codec anticipated, as a ``CodecError``: the message is quarantined with
    it instead of stopping the decoder (and every message behind it)."""
    return CodecError(f"decoder failed: {type(exc).__name__}: {exc}"[:500], reason="decoder_error")


def decode_batch(dispatcher: Dispatcher, pack: Callable[[Any], bytes],
                 messages: Sequence[Received]) -> list[Outcome]:
    out: list[Outcome] = []
    times: dict[datetime, int] = {}  # a message's records mostly share its time
    for _, topic, payload, received in messages:
        received_at = datetime.fromtimestamp(received, UTC)
        try:
            out.append(_outcome(dispatcher, pack, topic, payload, received_at, times))
        except CodecError as exc:
            out.append(Outcome(None, (), quarantine(pack, topic, payload, received_at, [exc]), None, (),
                               None, (), 0))
        except Exception as exc:  # noqa: BLE001 - a codec bug must not stop the gateway
            out.append(Outcome(None, (), quarantine(pack, topic, payload, received_at, [failed(exc)]),
                               None, (), None, (), 0))
    return out


def _outcome(dispatcher: Dispatcher, pack: Callable[[Any], bytes], topic: str, payload: bytes,
             received_at: datetime, times: dict[datetime, int]) -> Outcome:
    result = dispatcher.decode(topic, payload, received_at)
    env = result.envelope
    records = result.records
    entries = []
    statuses = []
    acks = []
    for record in records:
        kind = type(record)
        if kind is Measurement:  # the bulk: priority_of() inline
            priority = PRIORITY_HIGH if record.connector_mode == "alarm-mode" else PRIORITY_TELEMETRY
        else:
            priority = priority_of(record)
            if kind is Status:
                statuses.append((record.device_id, record.status))
            elif kind is CommandAck:
                acks.append((record.cmd_id, record.result))
        entries.append((priority, pack(to_wire(record, times))))
    return Outcome(
        result.codec, tuple(entries),
        quarantine(pack, topic, payload, received_at, result.errors) if result.errors else None,
        (env.device_id, env.seq, env.ts_text) if env is not None and env.seq is not None else None,
        tuple(statuses), records[0].device_id if records else None, tuple(acks), len(records))
