"""Buffer: SQLite store-and-forward between the site broker and the uplink.

The ack chain runs through here. An ``Append`` (a batch from the decoder, with the MQTT
message ids it came from) is written in ONE transaction that also assigns every record
its identity (boot epoch, sequence) and persists the v2 sequence-tracker state; only
after the commit does the source hear ``Committed`` and ack the site broker. Rows leave
only on ``Confirm`` (the server has them durably).

Leasing: the uplink asks for records with ``LeaseRequest``; the buffer answers with
``Leased`` (oldest first, priority class 0, alarms/events/acks, before class 1,
telemetry), or remembers the request and answers as soon as data arrives. A cursor per
class keeps leased rows from being leased twice; ``Rewind`` (an uplink that lost its
window) starts again from the oldest unconfirmed row.

Quota: ``reject`` leaves a batch that does not fit uncommitted (the source does not ack
it; the broker keeps it and redelivers it later) and tells the source the buffer is
full; once confirmations have freed a tenth of the quota it tells the source there is
``Room`` again. A batch larger than the whole quota is stored when the buffer is empty
(the quota is then exceeded by that one batch): nothing can ever block ingest for good.
``drop-oldest`` deletes the oldest telemetry, counts it, and stores a gap record (class 0)
naming the dropped sequences.

Leases are bounded by records and by bytes (the uplink's frame limit); a row too large for
any frame (a record stored by an older version) is moved to ``dead_letters`` with the
reason instead of stopping the uplink.

The SQLite side (tables, transactions, the quota's arithmetic, a corrupt file moved aside)
is ``edge.io.buffer_db.BufferDB``; this actor owns one and answers its peers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pykka
from prometheus_client import Gauge

from edge.codecs.batch import PRIORITY_HIGH, PRIORITY_TELEMETRY
from edge.io.buffer_db import RESERVE_BYTES, BufferDB, DiskFull, Entry, Leased
from edge.runtime import log
from edge.runtime.actor import ActorContext, EdgeActor
from edge.runtime.clock import Steady
from edge.runtime.health import CONDITIONS

__all__ = ["PRIORITY_HIGH", "PRIORITY_TELEMETRY", "Buffer", "BufferDB", "Committed", "Confirm",
           "DeadLetter", "Entry", "GetSeqState", "GetStats", "LeaseRequest", "Leased", "Refused",
           "Rewind", "Room", "SeqState", "Stats", "Append", "AppendLocal", "LocalAppended"]

_log = log.get(__name__)
_disk_lines = log.Throttle()

FULL = Gauge("edge_buffer_full", "1 while the quota is reached with policy reject: ingest paused")


# ----------------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class Append:
    """From the decoder: records of one batch of MQTT messages, to commit together.

    ``generation`` names the source's broker connection, ``batch`` numbers its batches
    from 1. A batch that does not follow the last committed one of its generation means
    one went missing (an actor crashed with it in its mailbox): it and every later batch
    of the generation are refused, so the source reconnects and the broker redelivers
    everything unacked, in order. Acks therefore never skip a message.
    """

    entries: tuple[tuple[int, bytes], ...]  # Entry, or (priority, body) as a plain tuple
    mids: tuple[int, ...]
    generation: int
    batch: int
    seq_state: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    fingerprints: tuple[int, ...] = ()  # of the batch's messages: committed with it (``Recent``)


@dataclass(frozen=True, slots=True)
class AppendLocal:
    """Records the gateway makes itself (command answers): appended outside the source's
    batch order, with the same identities and durability. ``reply_to`` (an actor of the
    graph) is told ``LocalAppended(receipt, ok)`` after the commit, or with ``ok`` False
    when the quota refused them: the sender keeps its side pending until it is told."""

    entries: tuple[Entry, ...]
    reply_to: str
    receipt: Any


@dataclass(frozen=True, slots=True)
class LocalAppended:
    """To the sender of an ``AppendLocal``: its records are durable (``ok``) or were refused."""

    receipt: Any
    ok: bool


@dataclass(frozen=True, slots=True)
class Committed:
    """To the source: these MQTT messages are durable; ack them."""

    mids: tuple[int, ...]
    generation: int
    batch: int


@dataclass(frozen=True, slots=True)
class Refused:
    """To the source: a batch of this generation was not stored (quota, or a hole before
    it); reconnect so the broker redelivers what is unacked. ``full``: the quota (policy
    reject): stay away until ``Room``."""

    generation: int
    reason: str
    full: bool = False


@dataclass(frozen=True, slots=True)
class Room:
    """To the source: the buffer that was full has room again."""


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    max_records: int
    max_bytes: int = 1 << 62


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """From the uplink: these rows can never travel (too large for a frame, refused by
    the server for good); keep them apart with the reason, out of the queue."""

    seqs: tuple[int, ...]
    reason: str



@dataclass(frozen=True, slots=True)
class Confirm:
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rewind:
    """The uplink lost its window (restart): lease everything unconfirmed again."""


@dataclass(frozen=True, slots=True)
class GetStats:
    """``BufferDB.stats()``: told back to ``reply_to`` as ``Stats`` (the uplink's heartbeat:
    no ask on the data path), or, without ``reply_to``, the answer of an ask (the demo,
    tests)."""

    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class Stats:
    stats: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GetSeqState:
    """The persisted v2 sequence state, told back to ``reply_to`` as ``SeqState`` (a
    message, not an ask: it queues behind every Append already sent, which is the point,
    and the decoder never blocks on a busy buffer). ``reply_to`` is the requester's own
    ref, not its name: the answer goes to the very instance that asked, never to a
    successor that replaced it meanwhile (that one asks again)."""

    reply_to: Any


@dataclass(frozen=True, slots=True)
class SeqState:
    state: dict[str, tuple[int, str | None]]
    recent: tuple[int, ...] = ()  # the committed message fingerprints, oldest first


# ----------------------------------------------------------------------------- actor
class Buffer(EdgeActor):
    """The buffer actor. Talks to ``source`` (Committed) and ``uplink`` (Leased)."""
    receives = (Append, AppendLocal, LeaseRequest, Confirm, DeadLetter, Rewind, GetStats, GetSeqState)

    EXPIRE_EVERY_S = 10.0

    def __init__(self, ctx: ActorContext, path: str, durability: str, quota_bytes: int,
                 policy: str, ttl_s: float = 0.0, source: str = "source", uplink: str = "uplink",
                 reserve_bytes: int = RESERVE_BYTES) -> None:
        super().__init__(ctx)
        self.args = (path, durability, quota_bytes, policy)
        self.reserve_bytes = reserve_bytes
        self.ttl_s = ttl_s
        self.next_expiry = 0.0
        self.source, self.uplink = source, uplink
        self.db: BufferDB | None = None
        self.waiting: LeaseRequest | None = None  # a lease request we could not answer yet
        self.full = False  # refused a batch for the quota; the source waits for Room
        self.disk_full = False  # refused one because its filesystem had no room

    def on_start(self) -> None:
        self.db = BufferDB(*self.args, reserve_bytes=self.reserve_bytes)
        _log.info("buffer_opened", **self.db.stats())

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        CONDITIONS.clear("buffer", quiet=True)
        FULL.set(0)

    def handle(self, message: Any) -> Any:
        db = self.db
        assert db is not None
        now = time.monotonic()
        if now >= self.next_expiry:
            self.next_expiry = now + self.EXPIRE_EVERY_S
            if isinstance(db.clock, Steady):
                db.clock.step("buffer")  # logged and counted; rows keep aging on the steady clock
            if not self.disk_full:
                db.hold_reserve()  # taken again once there is room for it
            if self.ttl_s:
                self._freeing(db.expire, self.ttl_s)
        match message:
            case Append(entries, mids, generation, batch, seq_state, fingerprints):
                problem = db.check_order(generation, batch)
                full = False
                if problem is None:
                    try:
                        if not db.append(entries, seq_state, generation, batch, fingerprints):
                            problem = f"buffer quota of {db.quota_bytes} bytes reached (policy reject)"
                            full = True
                    except DiskFull as exc:
                        # Like a full quota: nothing acked, the site broker keeps the messages
                        # and the source tries again after its backoff.
                        problem, full, self.disk_full = f"disk full: {exc}", True, True
                if problem is None and self.disk_full:
                    self.disk_full = False
                    _log.info("buffer_disk_room", detail="a batch committed again")
                    self._room()
                if problem is not None:
                    if generation not in db.refused_generations:
                        if full:
                            self._filled(problem)
                        else:
                            _log.warning("buffer_refused_batch", generation=generation, batch=batch,
                                         reason=problem)
                        db.refuse(generation)
                        self.send(self.source, Refused(generation, problem, full))
                    return None
                self.send(self.source, Committed(mids, generation, batch))
                if self.waiting is not None:
                    self._lease(self.waiting)
            case AppendLocal(entries, reply_to, receipt):
                ok = db.append(entries, {})
                if not ok:
                    _log.error("buffer_full_local_records_refused", records=len(entries), sender=reply_to)
                self.send(reply_to, LocalAppended(receipt, ok))
                if ok and self.waiting is not None:
                    self._lease(self.waiting)
            case LeaseRequest():
                self._lease(message)
            case Confirm(seqs):
                if self._freeing(db.confirm, seqs) and self.full and not self.disk_full \
                        and db.bytes <= db.quota_bytes * 0.9:
                    self._room()
            case DeadLetter(seqs, reason):
                if self._freeing(db.dead_letter, seqs, reason) and self.full and not self.disk_full \
                        and db.bytes <= db.quota_bytes * 0.9:
                    self._room()
            case Rewind():
                db.rewind()
            case GetStats(None):
                return db.stats()
            case GetStats(reply_to):
                try:
                    reply_to.tell(Stats(db.stats()))
                except pykka.ActorDeadError:
                    pass
            case GetSeqState(reply_to):
                try:
                    reply_to.tell(SeqState(db.seq_state(), db.recent()))
                except pykka.ActorDeadError:
                    pass  # the requester died meanwhile; its successor asks again
        return None

    def _lease(self, request: LeaseRequest) -> None:
        assert self.db is not None
        leased = self.db.lease(request.max_records, request.max_bytes)
        if leased is None:
            self.waiting = request
            return
        self.waiting = None
        self.send(self.uplink, leased)

    def _freeing(self, delete: Any, *args: Any) -> bool:
        """Confirmed, dead-lettered or expired rows deleted. On a full disk (a delete needs
        room in the log too) the buffer's reserve is given back and the delete tried again;
        without one the rows stay: confirmed ones are sent again after the next rewind (the
        receiver keeps each record once), expired ones go at the next try."""
        assert self.db is not None
        try:
            try:
                delete(*args)
            except DiskFull:
                if not self.db.release_reserve():
                    raise
                delete(*args)  # with the reserve's room
            return True
        except DiskFull as exc:
            held = _disk_lines.allow("delete")
            if held is not None:
                _log.warning("buffer_delete_failed", error=str(exc), suppressed=held,
                             detail="disk full: the rows stay and are sent again")
            return False

    def _filled(self, problem: str) -> None:
        self.full = True
        FULL.set(1)
        CONDITIONS.problem("buffer", f"{problem}: ingest paused until the uplink drains it")

    def _room(self) -> None:
        self.full = False
        FULL.set(0)
        CONDITIONS.clear("buffer")
        self.send(self.source, Room())

    def health(self) -> dict[str, Any]:
        return {"state": "running", **(self.db.stats() if self.db else {})}
