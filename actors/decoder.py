"""Decoder: MQTT messages in batches -> records for the buffer.

Every message ends up in the ``Store`` it belongs to: decoded records (priority class 0
for events and alarm-mode F2 data, 1 for telemetry), a ``Quarantined`` raw copy with the
reason when anything in it failed to decode (so the server can decode it later or
dead-letter it), or nothing at all when it is a v2 duplicate. The batch's MQTT ids go
along either way: what is in a committed Store is acked.

v2 sequence state lives in the ``SequenceTracker``; its changes travel in the Store and
are committed with the records. On start and on every new source connection (the broker
may redeliver) the tracker is reloaded from the committed state, so it never runs ahead
of what is durable. The reload is a message exchange, never a blocking ask: batches that
arrive meanwhile wait here (bounded by the source's receive maximum) and are decoded, in
order, once the state is back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
from prometheus_client import Counter

from edge import log
from edge.actor import ActorContext, EdgeActor
from edge.actors.buffer import PRIORITY_HIGH, PRIORITY_TELEMETRY, Entry, GetSeqState, SeqState, Store
from edge.codecs import registry as registry_mod
from edge.codecs.dispatch import Dispatcher
from edge.codecs.registry import CODECS
from edge.codecs.errors import CodecError
from edge.actors.commands import DeviceAck, Presence
from edge.codecs.records import CommandAck, Event, Measurement, Quarantined, Status
from edge.codecs.uplink import to_wire
from edge.codecs.v2 import SequenceTracker, Verdict

_log = log.get(__name__)

DECODED = Counter("edge_decoder_messages_decoded", "Messages decoded", ["codec"])
RECORDS = Counter("edge_decoder_records", "Records produced")
QUARANTINED = Counter("edge_decoder_messages_quarantined", "Messages kept raw with a reason", ["reason"])
DUPLICATES = Counter("edge_decoder_duplicates", "v2 messages dropped as duplicates (seq)")
GAPS = Counter("edge_decoder_sequence_gaps", "v2 messages missing between sequence numbers")
REBOOTS = Counter("edge_decoder_device_reboots", "v2 devices seen restarting their sequence")


@dataclass(frozen=True, slots=True)
class Incoming:
    """From the source: (mid, topic, payload, received at as epoch seconds) in order."""

    messages: tuple[tuple[int, str, bytes, float], ...]
    generation: int
    batch: int


def priority_of(record: Any) -> int:
    if isinstance(record, Event):
        return PRIORITY_HIGH
    if isinstance(record, Measurement) and record.connector_mode == "alarm-mode":
        return PRIORITY_HIGH
    return PRIORITY_TELEMETRY


class Decoder(EdgeActor):
    def __init__(self, ctx: ActorContext, registry_text: str, buffer: str = "buffer") -> None:
        super().__init__(ctx)
        self.dispatcher = Dispatcher(registry_mod.loads(registry_text))
        self.tracker = SequenceTracker()
        self.buffer = buffer
        self.generation: int | None = None
        self.pack = msgpack.Packer(use_bin_type=True).pack
        self.decoded = {codec: DECODED.labels(codec) for codec in CODECS}  # not per message
        self.loading = False
        self.waiting: list[Incoming] = []

    def on_start(self) -> None:
        self._reload()

    def _reload(self) -> None:
        self.loading = True
        self.send(self.buffer, GetSeqState(self.actor_ref))

    def handle(self, message: Any) -> Any:
        match message:
            case Incoming(_, generation, _):
                if generation != self.generation:
                    if self.generation is not None and not self.loading:
                        self._reload()  # redeliveries may follow: start from what is durable
                    self.generation = generation
                if self.loading:
                    self.waiting.append(message)
                else:
                    self._decode(message.messages, message.generation, message.batch)
            case SeqState(state):
                self.tracker.restore(state)
                self.loading = False
                waiting, self.waiting = self.waiting, []
                for incoming in waiting:
                    self._decode(incoming.messages, incoming.generation, incoming.batch)
            case _:
                raise TypeError(f"decoder got an unknown message {message!r}")

    def _decode(self, messages: tuple[tuple[int, str, bytes, float], ...], generation: int,
                batch: int) -> None:
        entries: list[Entry] = []
        seq_state: dict[str, tuple[int, str | None]] = {}
        seen: dict[str, tuple[float, str | None]] = {}
        acks: list[DeviceAck] = []
        pack = self.pack
        decoded: dict[str, int] = {}  # counters move once per batch: an inc() takes a lock
        records = 0
        for _, topic, payload, received in messages:
            received_at = datetime.fromtimestamp(received, UTC)
            try:
                result = self.dispatcher.decode(topic, payload, received_at)
            except CodecError as exc:
                entries.append(self._quarantine(topic, payload, received_at, [exc]))
                continue
            env = result.envelope
            if env is not None and env.seq is not None:
                verdict = self.tracker.observe(env.device_id, env.seq, env.ts_text)
                if not verdict.is_new:
                    DUPLICATES.inc()
                    continue
                if verdict.gap:
                    GAPS.inc(verdict.gap)
                if verdict.verdict is Verdict.REBOOT:
                    REBOOTS.inc()
                seq_state[env.device_id] = self.tracker.last(env.device_id)  # type: ignore[assignment]
            decoded[result.codec] = decoded.get(result.codec, 0) + 1
            for record in result.records:
                entries.append(Entry(priority_of(record), pack(to_wire(record))))
                if type(record) is Status:
                    seen[record.device_id] = (received, record.status)
                elif type(record) is CommandAck:
                    acks.append(DeviceAck(record.cmd_id, record.result))
            if result.records and result.records[0].device_id not in seen:
                seen[result.records[0].device_id] = (received, None)
            records += len(result.records)
            if result.errors:
                entries.append(self._quarantine(topic, payload, received_at, result.errors))
        for codec, n in decoded.items():
            self.decoded[codec].inc(n)
        RECORDS.inc(records)
        mids = tuple(m[0] for m in messages)
        self.send(self.buffer, Store(tuple(entries), mids, generation, batch, seq_state))
        if "commands" in self.ctx.handles:
            if seen:
                self.send("commands", Presence(seen))
            for ack in acks:
                self.send("commands", ack)

    def _quarantine(self, topic: str, payload: bytes, received_at: datetime,
                    errors: list[CodecError]) -> Entry:
        first = errors[0]
        QUARANTINED.labels(first.reason).inc()
        text = "; ".join(e.describe() for e in errors)[:2000]
        _log.warning("message_quarantined", topic=topic, reason=first.reason, detail=text[:300])
        record = Quarantined(received_at, topic, payload, first.reason, text, first.field, first.offset)
        return Entry(PRIORITY_TELEMETRY, self.pack(to_wire(record)))
