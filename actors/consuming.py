"""The base of the server's Kafka consumer actors (the stream decoder and the sink).

One consumer per actor, in a consumer group: run more processes to share partitions.
The actor polls in a loop of self-messages (a stop request is handled between two
polls) and collects records into a batch by size and age (or until it has caught up).
A batch goes through two steps:

- ``prepare`` (the actor's thread: parsing, CPU work), then
- ``process`` (the actor's writer thread: the durable work, such as producing and waiting
  for Kafka's acks or committing a database transaction),

and only then are its offsets committed. By default one batch is in ``process`` at a
time, in order; the next one is polled and prepared meanwhile, so Python's work overlaps
the database's or the broker's. A consumer whose downstream takes batches in any order
(the sink: rows are keyed, upserts commute) may have ``writers`` > 1 batches in
``process`` at once, each on its own writer thread; offsets are still committed in batch
order, each batch's only once it and every batch before it are durable. Nothing is
committed before it is durable downstream; a crash in between replays the batch, which
every consumer here absorbs by record identity.

When ``process`` raises one of ``retryable`` (the database is away), the batch is kept
(with the batches in flight after it, once their writers are done, and the records taken
after them, behind it), the partitions are paused (polling continues, so the group keeps
the member), and the batch is retried alone with capped exponential backoff. On a
rebalance the batch in flight is finished and committed; what was only taken is dropped
*uncommitted* and read again from the committed offsets.

A consumer that owns partitions with records past its position and fetches none of them
for ``stall_s`` is closed and built again (``edge_kafka_consumer_rebuilds``). The one such
stall seen here (kafka-python 3.0.12 never finishing a rejoin a metadata change started)
is worked around in ``edge.io.kafka``; this watch is for whatever else leaves a client
assigned but silent: it costs broker calls only while the consumer is idle.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import Counter, Gauge, Histogram

from edge.codecs.stream import Outgoing, dead_letter
from edge.config import KafkaConfig
from edge.errors import ServiceUnavailable
from edge.io import kafka as kafka_io
from edge.io.kafka import Delivery, KafkaRecord, Partition, RebalanceListener, consumer, producer
from edge.runtime import faults, log
from edge.runtime.actor import ActorContext, EdgeActor
from edge.runtime.health import CONDITIONS

_log = log.get(__name__)
_dead_letter_lines = log.Throttle()

LAG = Gauge("edge_kafka_consumer_lag", "Records behind the partition's end",
            ["group", "topic", "partition"])
BATCH_RECORDS = Histogram("edge_consumer_batch_records", "Kafka records per processed batch",
                          ["group"], buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000))
PROCESS_SECONDS = Histogram("edge_consumer_process_seconds", "Time to process one batch durably",
                            ["group"])
COMMITTED = Counter("edge_consumer_records_committed", "Records whose offsets were committed",
                    ["group"])
RETRIES = Counter("edge_consumer_batch_retries", "Batches kept and retried after a retryable error",
                  ["group"])
REBUILDS = Counter("edge_kafka_consumer_rebuilds", "Consumers closed and built again after "
                   "fetching nothing while their partitions had records past the position",
                   ["group"])
DLQ = Counter("edge_dlq_records", "Records sent to a dead-letter topic", ["topic", "reason"])
PAUSED = Gauge("edge_consumer_paused", "1 while consumption is paused waiting for a dependency",
               ["group"])



@dataclass(frozen=True, slots=True)
class _Poll:
    """Wake-up: poll once more."""


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A batch handed to the writer thread; the future's result is its duration."""

    batch: list[KafkaRecord]
    future: Future[float]


class ConsumingActor(EdgeActor):
    receives = (_Poll,)

    retryable: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, ctx: ActorContext, kafka: KafkaConfig, group: str, topics: tuple[str, ...],
                 client_id: str, batch_max: int, batch_ms: float, retry_initial_s: float = 0.5,
                 retry_max_s: float = 15.0, stall_s: float | None = None, writers: int = 1) -> None:
        super().__init__(ctx)
        self.kafka, self.group, self.topics, self.client_id = kafka, group, topics, client_id
        self.batch_max, self.batch_s = batch_max, batch_ms / 1000
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self.consumer: Any = None
        self.delivery: Delivery | None = None
        self.pending: list[KafkaRecord] = []
        self.writers = writers
        self.inflight: deque[_InFlight] = deque()  # oldest first
        self.writer = ThreadPoolExecutor(writers, thread_name_prefix=f"{ctx.name}-writer")
        self.batch_started = 0.0
        self.retry_at: float | None = None
        self.retry_delay = retry_initial_s
        self.lag_at = 0.0
        self.committed: dict[Partition, int] = {}
        self.next_offset: dict[Partition, int] = {}  # after the last record taken
        self._paused = PAUSED.labels(group)
        self.rebalanced = threading.Event()
        self.assigned = threading.Event()
        # Records waiting past the position this long, none fetched: the consumer is rebuilt.
        # Twice the session timeout, so a rebalance that waits for a dead member is not one.
        self.stall_s = stall_s if stall_s is not None else max(30.0, 2 * kafka.session_timeout_ms / 1000)
        self.progress_at = time.monotonic()  # records taken, a rebalance, a pause
        self.behind_since: float | None = None  # records seen waiting, none taken since

    # -- subclass API ------------------------------------------------------------------
    def prepare(self, records: list[KafkaRecord]) -> Any:
        """CPU work on a batch, on the actor's thread while the previous batch is being
        written; what it returns goes to ``process``. By default, the records."""
        return records

    def process(self, prepared: Any) -> None:
        """Make the batch durable downstream; return only when it is. Raise to retry.
        Runs on a writer thread: one batch at a time, in order, unless ``writers`` > 1."""
        raise NotImplementedError

    def dead_letter(self, rec: KafkaRecord, reason: str, detail: str, field: str | None,
                    value: bytes | None = None, **context: Any) -> Outgoing:
        """The record (or ``value``: the part of it that failed), kept with why, for
        ``<topic>.dlq``: counted and logged here."""
        DLQ.labels(rec.topic + ".dlq", reason).inc()
        held = _dead_letter_lines.allow((rec.topic, reason))
        if held is not None:
            _log.warning("dead_letter", actor=self.name, topic=rec.topic, partition=rec.partition,
                         offset=rec.offset, reason=reason, field=field, detail=detail[:300],
                         suppressed=held, **context)
        return dead_letter(rec.topic, rec.key, rec.value if value is None else value, rec.headers,
                           rec.partition, rec.offset, reason, detail, field)

    def opened(self) -> None:
        """Open what ``process`` needs (called once the clients exist)."""

    # -- loop --------------------------------------------------------------------------
    def on_start(self) -> None:
        self.delivery = Delivery(lambda: producer(self.kafka, f"{self.client_id}-out"), name=self.name,
                                 bootstrap=self.kafka.bootstrap_servers)
        self._subscribe()
        self.opened()
        self.tell_self(_Poll())

    def _subscribe(self) -> None:
        self.consumer = consumer(self.kafka, self.client_id, self.group, self.batch_max)
        self._await_metadata()
        self.consumer.subscribe(list(self.topics), listener=RebalanceListener(
            self.rebalanced.set, self._on_assigned))
        self.progress_at, self.behind_since = time.monotonic(), None

    # kafka-python calls these on its network thread, where no blocking consumer call (commit,
    # committed) may run and the actor may be mid-batch: they only raise flags, which the
    # actor handles on its own thread after its next poll (``_rebalanced``). Positions are
    # rewound only once an assignment is complete: a revocation starts a rebalance that is
    # still under way, and a seek then races the group's own offset handling.
    def _on_assigned(self, assigned: list[Partition]) -> None:
        self.assigned.set()
        self.rebalanced.set()
        _log.info("partitions_assigned", actor=self.name, group=self.group,
                  partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

    def _await_metadata(self, timeout_s: float = 30.0) -> None:
        """Join the group only once this client knows the topics' partitions: a member that
        joins without them is assigned nothing and, seen here, may stay so."""
        deadline = time.monotonic() + timeout_s
        missing = list(self.topics)
        while missing and time.monotonic() < deadline:
            missing = [t for t in missing if not self.consumer.partitions_for_topic(t)]
            if missing:
                time.sleep(0.2)
        if missing:
            _log.warning("topics_without_metadata", actor=self.name, topics=missing,
                         detail="subscribing anyway; partitions are picked up when they appear")

    def close(self) -> None:
        if self.inflight and self.consumer is not None:
            try:
                while self.inflight:  # durable work finishes; offsets are committed if they can be
                    self._settle()
            except Exception as exc:  # noqa: BLE001 - closing: the next owner replays it
                _log.warning("batch_unsettled_at_close", actor=self.name, error=repr(exc))
        self.inflight.clear()
        self.writer.shutdown(wait=True)
        if self.delivery is not None:
            self.delivery.close()
            self.delivery = None
        if self.consumer is not None:
            self._close_consumer()
            self.consumer = None

    def _close_consumer(self) -> None:
        """Leave the group without committing: what was not committed is read again."""
        try:
            kafka_io.close_consumer(self.consumer)
        except ServiceUnavailable as exc:
            _log.warning("consumer_close_failed", actor=self.name, error=str(exc))

    def handle(self, message: Any) -> Any:
        match message:
            case _Poll():
                if self.consumer is not None:
                    self._step()
                    self.tell_self(message)
        return None

    def health(self) -> dict[str, Any]:
        return {"state": "running", "pending": len(self.pending), "paused": self.retry_at is not None,
                "in_flight": sum(len(f.batch) for f in self.inflight)}

    def _step(self) -> None:
        now = time.monotonic()
        if self.rebalanced.is_set():
            self._rebalanced()
        while self.inflight and self.inflight[0].future.done():
            if not self._settle():
                break
        if self.retry_at is not None:
            assigned = self.consumer.assignment()
            if assigned:
                self.consumer.pause(*assigned)
            self._take(self.consumer.poll(timeout_ms=max(0, min(500, (self.retry_at - now) * 1000))))
            if time.monotonic() >= self.retry_at and self.retry_at is not None:
                self._flush()
            return
        room = max(1, self.batch_max - len(self.pending))
        wait_ms = 100 if not self.pending else max(0, (self.batch_started + self.batch_s - now) * 1000)
        polled = self.consumer.poll(timeout_ms=min(wait_ms, 100), max_records=room)
        taken = sum(len(records) for records in polled.values())
        self._take(polled)
        # Flush when full, when old, or when caught up (the poll had less than asked for):
        # a backlog drains in big batches, live traffic is written without waiting batch_ms.
        if self.pending and (len(self.pending) >= self.batch_max or taken < room
                             or time.monotonic() - self.batch_started >= self.batch_s):
            self._flush()
        if now - self.lag_at > 2.0:
            self.lag_at = now
            self._lag()
            self._watch(now)

    def _take(self, polled: dict[Partition, list[KafkaRecord]]) -> None:
        if self.rebalanced.is_set():
            self._rebalanced()  # what this poll returned may follow records just dropped
            return
        for tp, records in polled.items():
            if records:
                if not self.pending:
                    self.batch_started = self.progress_at = time.monotonic()
                self.pending.extend(records)
                self.next_offset[tp] = records[-1].offset + 1

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        prepared = self.prepare(batch)  # while the batches before it are being written
        while len(self.inflight) >= self.writers:  # a writer must be free
            if not self._settle():
                self.pending.extend(batch)  # behind the batches that failed, which go first
                return
        self.inflight.append(_InFlight(batch, self.writer.submit(self._durable, prepared)))
        if self.retry_at is not None:
            self._settle()  # a retry is written alone: consumption resumes once it is durable

    def _durable(self, prepared: Any) -> float:
        start = time.monotonic()
        self.process(prepared)
        return time.monotonic() - start

    def _settle(self) -> bool:
        """Wait for the oldest batch in flight. Durable: commit its offsets (and resume if
        paused), True. Failed with a retryable error: keep it first in ``pending``, the
        batches in flight after it behind it (once their writers are done: what they made
        durable is written again, and absorbed by identity), pause, False. Any other error
        propagates (the actor fails and restarts from the commits)."""
        batch, future = self.inflight[0].batch, self.inflight[0].future
        self.inflight.popleft()
        try:
            seconds = future.result()
        except self.retryable as exc:
            RETRIES.labels(self.group).inc()
            later = list(self.inflight)
            self.inflight.clear()
            wait([f.future for f in later])
            self.pending = batch + [r for f in later for r in f.batch] + self.pending
            self.retry_at = time.monotonic() + self.retry_delay
            error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            CONDITIONS.problem(self.name, f"writes paused, retrying: {type(exc).__name__}", error=error)
            _log.info("batch_retry", actor=self.name, group=self.group, records=len(batch),
                      error=error, retry_in_s=round(self.retry_delay, 2))
            self.retry_delay = min(self.retry_delay * 2, self.retry_max_s)
            self._paused.set(1)
            self.progress_at = time.monotonic()
            return False
        PROCESS_SECONDS.labels(self.group).observe(seconds)
        BATCH_RECORDS.labels(self.group).observe(len(batch))
        faults.BEFORE_COMMIT.maybe(actor=self.name, records=len(batch))  # tests only
        try:
            self.committed.update(kafka_io.commit(self.consumer, batch))
            COMMITTED.labels(self.group).inc(len(batch))
        except ServiceUnavailable as exc:
            # Processed durably but not committed (a rebalance took the partitions): the
            # next owner replays these records, and identity keys absorb the replay.
            _log.warning("commit_failed", actor=self.name, group=self.group, records=len(batch),
                         error=str(exc))
        if self.retry_at is not None:
            self.retry_at, self.retry_delay = None, self.retry_initial_s
            paused = self.consumer.paused()
            if paused:
                self.consumer.resume(*paused)
                # Fetch exactly where this actor stopped taking records: a resumed
                # partition must never skip ahead (kafka-python issue #2011).
                for tp in paused:
                    if tp in self.next_offset:
                        self.consumer.seek(tp, self.next_offset[tp])
            self._paused.set(0)
            CONDITIONS.clear(self.name)
            _log.info("batch_resumed", actor=self.name, group=self.group)
        return True

    def _rebalanced(self) -> None:
        """After a rebalance: drop the uncommitted batch and read every partition this member
        owns again from its committed offset. kafka-python keeps its fetch position for a
        partition that stays with the member, so without the seek the dropped records would
        be skipped, and the next commit would pass them: lost. Replays are absorbed by the
        records' identities downstream."""
        self.rebalanced.clear()
        rewind = self.assigned.is_set()
        self.assigned.clear()
        self.progress_at, self.behind_since = time.monotonic(), None
        while self.inflight:  # durable already or soon: finish; a commit may fail, then it replays
            self._settle()
        if self.pending:
            _log.info("batch_dropped_on_rebalance", actor=self.name, records=len(self.pending),
                      detail="uncommitted: read again from the committed offsets")
        self.pending = []
        self.committed.clear()
        self.next_offset.clear()
        self.retry_at, self.retry_delay = None, self.retry_initial_s
        self._paused.set(0)
        if not rewind:
            return  # revoked: the assignment that completes this rebalance rewinds
        try:
            kafka_io.rewind_to_committed(self.consumer)
        except ServiceUnavailable as exc:
            # Positions unknown: crash, and the restarted consumer starts from the commits.
            raise RuntimeError(f"{self.name}: cannot rewind after a rebalance: {exc}") from exc

    def _watch(self, now: float) -> None:
        """Rebuild the consumer when records have waited past its position for ``stall_s``
        and it took none of them. Checked every lag tick, asking the broker only once the
        consumer has been idle for a while: an idle, caught-up consumer costs one ListOffsets
        every few seconds."""
        if (self.retry_at is not None or self.inflight or self.pending
                or now - self.progress_at < min(10.0, self.stall_s)):
            self.behind_since = None
            return
        try:
            behind = kafka_io.records_behind(self.consumer, self.next_offset)
        except ServiceUnavailable:
            return  # the broker is away: no evidence either way
        if not behind:
            self.behind_since = None
        elif self.behind_since is None or self.progress_at > self.behind_since:
            self.behind_since = now
        elif now - self.behind_since >= self.stall_s:
            self._rebuild(behind, now - self.progress_at)

    def _rebuild(self, behind: dict[Partition, int], idle_s: float) -> None:
        REBUILDS.labels(self.group).inc()
        _log.error("kafka_consumer_stalled", actor=self.name, group=self.group,
                   idle_s=round(idle_s, 1), stall_s=self.stall_s,
                   behind={f"{tp.topic}/{tp.partition}": n for tp, n in sorted(behind.items())},
                   detail="fetching nothing with records waiting: closed and subscribed again")
        self._close_consumer()
        self.committed.clear()
        self.next_offset.clear()
        self.rebalanced.clear()
        self.assigned.clear()
        self._subscribe()

    def _lag(self) -> None:
        try:
            for tp, n in kafka_io.lag(self.consumer, self.committed).items():
                LAG.labels(self.group, tp.topic, str(tp.partition)).set(n)
        except ServiceUnavailable:
            pass

