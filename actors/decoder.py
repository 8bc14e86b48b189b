"""Decoder: MQTT messages in batches -> records for the buffer.

Every message ends up in the buffer's ``Append`` of its batch: decoded records (priority class 0
for events and alarm-mode F2 data, 1 for telemetry), a ``Quarantined`` raw copy with the
reason when anything in it failed to decode (so the server can decode it later or
dead-letter it), or nothing at all when it is a v2 duplicate. The batch's MQTT ids go
along either way: what is in a committed Append is acked.

v2 sequence state lives in the ``SequenceTracker``; its changes travel in the Append and
are committed with the records. So do the fingerprints of the messages taken (``Recent``,
the last ``recent`` of them): a message the site broker delivers again with the DUP flag
(the gateway stopped between the buffer's commit and the PUBACK) whose fingerprint is
there is already stored, and is only acked; whatever its kind, it is stored once. On start
and on every new source connection (the broker may redeliver) both are reloaded from the
committed state, so they never run ahead of what is durable. The reload is a message
exchange, never a blocking ask: batches that arrive meanwhile wait here (bounded by the
source's receive maximum) and are decoded, in order, once the state is back.

The decoding itself (``edge.codecs.batch``) runs on this actor's thread, or with
``[decoder] processes`` >= 1 in decoder processes (edge/io/decode_pool.py) that do not share
the gateway's GIL; the tracker, the counters, the logs and the ack chain stay here either
way, applied to the outcomes in message order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
from prometheus_client import Counter

from edge.actors.buffer import Append, Entry, GetSeqState, SeqState
from edge.actors.commands import DeviceAck, Presence
from edge.codecs import registry as registry_mod
from edge.codecs.batch import PRIORITY_HIGH, Quarantine, Received, Recent, decode_batch, digest
from edge.codecs.dispatch import Dispatcher
from edge.codecs.errors import CodecError
from edge.codecs.limits import check_wire_record, safe_text
from edge.codecs.records import DeviceGap
from edge.codecs.registry import CODECS
from edge.codecs.uplink import to_wire
from edge.codecs.v2 import SEQ_MOD, SeqResult, SequenceTracker, Verdict
from edge.io.decode_pool import DecodePool
from edge.runtime import log
from edge.runtime.actor import ActorContext, EdgeActor

_log = log.get(__name__)
_quarantine_lines = log.Throttle()  # a device sending garbage fast must not flood the log
_gap_lines = log.Throttle()  # nor one whose sequence jumps about

DECODED = Counter("edge_decoder_messages_decoded", "Messages decoded", ["codec"])
RECORDS = Counter("edge_decoder_records", "Records produced")
QUARANTINED = Counter("edge_decoder_messages_quarantined", "Messages kept raw with a reason", ["reason"])
DUPLICATES = Counter("edge_decoder_duplicates", "v2 messages dropped as duplicates (seq)", ["device"])
REDELIVERED = Counter("edge_decoder_redeliveries",
                      "Messages the site broker delivered again that were already stored: acked only")
DEVICES_LABELLED = 500  # per-device duplicate counts for this many devices, then "other"
GAPS = Counter("edge_device_gaps", "v2 device messages that never arrived (sequence gaps, the lost start of a "
               "boot): each gap also goes upstream as a device_gap event")
REBOOTS = Counter("edge_decoder_device_reboots", "v2 devices seen restarting their sequence")
JUMPS = Counter("edge_decoder_sequence_jumps", "v2 sequences that jumped ahead beyond any plausible loss")


@dataclass(frozen=True, slots=True)
class Incoming:
    """From the source: (mid, topic, payload, received at as epoch seconds) in order."""

    messages: tuple[Received, ...]
    generation: int
    batch: int
    redelivered: frozenset[int] = frozenset()  # ids of messages that came with the DUP flag


class Decoder(EdgeActor):
    receives = (Incoming, SeqState)

    def __init__(self, ctx: ActorContext, registry_text: str, buffer: str = "buffer",
                 processes: int = 0, window: tuple[float, float] = (0.0, 0.0), recent: int = 8192) -> None:
        """``window``: (max age, max ahead) of a record's time around its message's receive
        time, in seconds; 0 leaves that side open. ``recent``: how many message fingerprints
        to keep for redeliveries (at least the source's receive maximum: what the broker
        can have sent and not seen acked)."""
        super().__init__(ctx)
        self.registry_text, self.processes, self.window = registry_text, processes, window
        self.dispatcher = Dispatcher.with_window(registry_mod.loads(registry_text), *window)
        self.pool: DecodePool | None = None
        self.tracker = SequenceTracker()
        self.recent = Recent(recent)
        self.duplicates: dict[str, Any] = {}  # device -> its DUPLICATES child
        self.buffer = buffer
        self.generation: int | None = None
        self.pack = msgpack.Packer(use_bin_type=True).pack
        self.decoded = {codec: DECODED.labels(codec) for codec in CODECS}  # not per message
        self.loading = False
        self.waiting: list[Incoming] = []

    def on_start(self) -> None:
        if self.processes:
            self.pool = DecodePool(self.registry_text, self.processes, self.window)
        self._reload()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _reload(self) -> None:
        self.loading = True
        self.send(self.buffer, GetSeqState(self.actor_ref))

    def handle(self, message: Any) -> Any:
        match message:
            case Incoming(_, generation, _, _):
                if generation != self.generation:
                    if self.generation is not None and not self.loading:
                        self._reload()  # redeliveries may follow: start from what is durable
                    self.generation = generation
                if self.loading:
                    self.waiting.append(message)
                else:
                    self._decode(message)
            case SeqState(state, recent):
                self.tracker.restore(state)
                self.recent.restore(recent)
                self.loading = False
                waiting, self.waiting = self.waiting, []
                for incoming in waiting:
                    self._decode(incoming)

    def _decode(self, incoming: Incoming) -> None:
        messages, redelivered = incoming.messages, incoming.redelivered
        if self.pool is not None:
            outcomes = self.pool.decode(messages)
        else:
            outcomes = decode_batch(self.dispatcher, self.pack, messages)
        entries: list[tuple[int, bytes]] = []  # Entry or its plain tuple
        seq_state: dict[str, tuple[int, str | None]] = {}
        seen: dict[str, str | None] = {}
        acks: list[DeviceAck] = []
        decoded: dict[str, int] = {}  # counters move once per batch: an inc() takes a lock
        records = 0
        observe, last, recent = self.tracker.observe, self.tracker.last, self.recent
        fingerprints: list[int] = []
        for (mid, topic, payload, received), out in zip(messages, outcomes, strict=True):
            fingerprint = digest(topic, payload)
            known = fingerprint in recent
            if known and mid in redelivered:
                REDELIVERED.inc()
                _log.debug("redelivery_dropped", topic=topic, mid=mid, detail="stored before the gateway stopped")
                continue
            recent.add(fingerprint)
            fingerprints.append(fingerprint)
            codec, out_entries, quarantine, seq, statuses, device, out_acks, n = out
            if codec is None:
                entries.append(self._quarantined(topic, quarantine))
                continue
            if seq is not None:
                verdict = observe(*seq, known)
                if verdict.verdict is Verdict.DUPLICATE:
                    self._duplicate(seq[0], seq[1], known)
                    continue
                if verdict.gap:
                    GAPS.inc(verdict.gap)
                    gap = self._gap(seq, verdict, received, topic)
                    if gap is not None:
                        entries.append(gap)
                if verdict.verdict is Verdict.REBOOT:
                    REBOOTS.inc()
                elif verdict.verdict is Verdict.JUMP:
                    JUMPS.inc()
                    _log.warning("sequence_jump", device=seq[0], seq=seq[1],
                                 detail="ahead of the last seen by more than any plausible loss")
                seq_state[seq[0]] = last(seq[0])  # type: ignore[assignment]
            decoded[codec] = decoded.get(codec, 0) + 1
            entries.extend(out_entries)  # (priority, body) pairs: what an Entry is
            for status_device, status in statuses:
                seen[status_device] = status
            for cmd_id, result in out_acks:
                acks.append(DeviceAck(cmd_id, result))
            if device is not None and device not in seen:
                seen[device] = None
            records += n
            if quarantine is not None:
                entries.append(self._quarantined(topic, quarantine))
        for codec, n in decoded.items():
            self.decoded[codec].inc(n)
        RECORDS.inc(records)
        mids = tuple(m[0] for m in messages)
        self.send(self.buffer, Append(tuple(entries), mids, incoming.generation, incoming.batch, seq_state,
                                      tuple(fingerprints)))
        if self.ctx.has_peer("commands"):
            if seen:
                self.send("commands", Presence(seen))
            for ack in acks:
                self.send("commands", ack)

    def _gap(self, seq: tuple[str, int, str], verdict: SeqResult, received: float, topic: str) -> Entry | None:
        """The missing messages as a ``device_gap`` event, at the time the gateway received
        the message that showed them (its envelope's ``ts`` is the sender's: it may be
        naive, or years off, where the records' window check quarantined them). Checked
        like every record the receiver takes; one it would refuse is not sent (the gap
        is still counted and logged)."""
        device, number, _ = seq
        reason = "reboot" if verdict.verdict is Verdict.REBOOT else "gap"
        gap = DeviceGap(datetime.fromtimestamp(received, UTC), device, topic, number,
                        (number - verdict.gap) % SEQ_MOD, verdict.gap, reason)
        held = _gap_lines.allow("device_gap")
        try:
            check_wire_record(gap)
        except CodecError as exc:
            if held is not None:
                _log.warning("device_gap_not_sent", device=safe_text(device, 200), seq=number,
                             missing=verdict.gap, error=exc.describe()[:300], suppressed=held)
            return None
        if held is not None:
            _log.info("device_gap", device=device, seq=number, missing=verdict.gap, reason=reason, suppressed=held)
        return Entry(PRIORITY_HIGH, self.pack(to_wire(gap)))

    def _duplicate(self, device: str, seq: int, known: bool) -> None:
        counter = self.duplicates.get(device)
        if counter is None:
            if len(self.duplicates) < DEVICES_LABELLED:
                counter = self.duplicates[device] = DUPLICATES.labels(device)
            else:
                counter = DUPLICATES.labels("other")
        counter.inc()
        _log.debug("duplicate_dropped", device=device, seq=seq,
                   detail="the same bytes seen before" if known else "at or behind the last seq, not newer")

    @staticmethod
    def _quarantined(topic: str, q: Quarantine | None) -> Entry:
        assert q is not None
        QUARANTINED.labels(q.reason).inc()
        held = _quarantine_lines.allow(q.reason)
        if held is not None:
            _log.warning("message_quarantined", topic=topic, reason=q.reason, detail=q.detail[:300],
                         suppressed=held)
        return Entry(*q.entry)
