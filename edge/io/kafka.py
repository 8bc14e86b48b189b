"""Apache Kafka for the server's actors: clients built from ``[kafka]``, and delivery that
only returns once Kafka has every record (acks=all, idempotent producer).

``Delivery.deliver(messages)`` is the primitive behind every "ack only after Kafka has
it" in the ack chain: it sends, waits for every future, and sends again what failed
(broker down, leader moving), with a capped backoff, until all are acknowledged or the
owner stops. It never returns early: callers ack MQTT or commit offsets after it. What
Kafka refuses for good (a message too large, an invalid record: ``REFUSED``) is never
sent again: it goes to ``<topic>.dlq`` with the reason, bounded in size, and the rest of
the delivery goes on. The producer refuses messages over ``max_message_bytes`` itself,
before sending; a refusal from the broker is fatal to kafka-python's idempotent producer
(it aborts every batch after it with the same error), so then the producer is replaced
and each message of the refused batches is sent again alone, to tell the one refused from
its innocent neighbours.
Resending after a failed future can write a record twice to Kafka; everything
downstream is keyed by the record's identity, so that costs space, never a double row.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Histogram

from edge.codecs.limits import bounded_payload
from edge.codecs.stream import Outgoing, Topics, from_batch, raw, refused
from edge.codecs.uplink import Batch
from edge.config import KafkaConfig
from edge.errors import ServiceError, ServiceUnavailable, Stopped
from edge.runtime import log
from edge.runtime.health import CONDITIONS

_log = log.get(__name__)
_refused_lines = log.Throttle()

PRODUCED = Counter("edge_kafka_produced", "Records Kafka acknowledged", ["topic"])
PRODUCE_RETRIES = Counter("edge_kafka_produce_retries", "Records sent again after a failed delivery",
                          ["topic"])
STALLS = Counter("edge_kafka_producer_stalls", "Producers replaced after acknowledging nothing "
                 "for longer than their delivery timeout")
REFUSED_RECORDS = Counter("edge_kafka_refused", "Messages Kafka refused for good (too large, "
                          "invalid), sent to the dead-letter topic instead", ["topic", "reason"])
UNDELIVERABLE = Counter("edge_kafka_undeliverable", "Dead letters Kafka refused too: logged and "
                        "dropped (never retried)", ["topic"])
DELIVER_SECONDS = Histogram("edge_kafka_deliver_seconds", "Time until Kafka acknowledged a whole set",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


def _common(cfg: KafkaConfig, client_id: str) -> dict:
    out: dict = {"bootstrap_servers": list(cfg.bootstrap_servers), "client_id": client_id,
                 "bootstrap_timeout_ms": int(cfg.connect_timeout_s * 1000)}
    if cfg.sasl_username:
        out.update(security_protocol="SASL_SSL" if cfg.tls else "SASL_PLAINTEXT",
                   sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                   sasl_plain_password=cfg.sasl_password.reveal())
    elif cfg.tls:
        out["security_protocol"] = "SSL"
    if cfg.tls and cfg.ca_file:
        out["ssl_cafile"] = cfg.ca_file
    return out


DELIVERY_TIMEOUT_MS = 60_000  # a record not acknowledged by then fails, and is sent again
SUSPECT_STALL_S = 20.0  # after a failed or unanswered send, no progress this long, the broker reachable: replace
# Errors about the message itself: sending it again gives the same answer.
REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError,
           InvalidTimestampError, InvalidTopicError)


# kafka-python's types as the consuming actors name them (they import no kafka themselves).
KafkaRecord = ConsumerRecord
Partition = TopicPartition


def unreachable(cfg: KafkaConfig, exc: KafkaError) -> ServiceError:
    return ServiceUnavailable(f"Kafka at {','.join(cfg.bootstrap_servers)} is not reachable within "
                        f"{cfg.connect_timeout_s:g} s: {type(exc).__name__}: {exc}")


def producer(cfg: KafkaConfig, client_id: str) -> KafkaProducer:
    return KafkaProducer(**_common(cfg, client_id), acks="all", enable_idempotence=True,
                         delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                         linger_ms=cfg.linger_ms, batch_size=256 * 1024,
                         compression_type=None if cfg.compression == "none" else cfg.compression,
                         max_request_size=cfg.max_message_bytes)


def consumer(cfg: KafkaConfig, client_id: str, group: str, max_poll_records: int,
             metadata_max_age_ms: int = 30_000) -> KafkaConsumer:
    made = KafkaConsumer(**_common(cfg, client_id), group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", max_poll_records=max_poll_records,
                         isolation_level="read_committed",
                         # New topics or partitions are noticed (and rebalanced) this soon.
                         metadata_max_age_ms=metadata_max_age_ms,
                         session_timeout_ms=cfg.session_timeout_ms,
                         heartbeat_interval_ms=max(500, min(3_000, cfg.session_timeout_ms // 10)))
    _complete_pending_joins(made)
    return made


class RebalanceListener(ConsumerRebalanceListener):
    """kafka-python calls these on its network thread, where no blocking consumer call may
    run: ``on_revoked()`` and ``on_assigned(partitions)`` should only raise flags."""

    def __init__(self, on_revoked: Callable[[], None],
                 on_assigned: Callable[[list[Partition]], None]) -> None:
        self.revoked, self.assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked()

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned(list(assigned))


def commit(consumer: Any, batch: Sequence[KafkaRecord]) -> dict[Partition, int]:
    """Commit the offsets after ``batch`` (the highest per partition, plus one); returns
    them. ``ServiceUnavailable`` when the commit fails (the group rebalanced, the broker is
    away): the records are then read again by whoever owns them next."""
    offsets: dict[Partition, OffsetAndMetadata] = {}
    for r in batch:
        tp = TopicPartition(r.topic, r.partition)
        if tp not in offsets or offsets[tp].offset <= r.offset:
            offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
    try:
        consumer.commit(offsets)
    except (CommitFailedError, KafkaError) as exc:
        raise ServiceUnavailable(f"Kafka refused the offset commit: {exc!r}") from exc
    return {tp: om.offset for tp, om in offsets.items()}


def rewind_to_committed(consumer: Any) -> None:
    """Resume every paused partition and put each assigned one back at its committed offset
    (the beginning when none). ``ServiceUnavailable`` when the offsets cannot be read."""
    try:
        paused = consumer.paused()
        if paused:
            consumer.resume(*paused)
        for tp in consumer.assignment():
            offset = consumer.committed(tp)
            if offset is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka: cannot read committed offsets: {exc!r}") from exc


def close_consumer(consumer: Any) -> None:
    """Leave the group without committing: what was not committed is read again.
    ``ServiceUnavailable`` when the group could not be left cleanly."""
    try:
        consumer.close(autocommit=False, timeout_ms=5_000)
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka: consumer close failed: {exc!r}") from exc


def lag(consumer: Any, committed: dict[Partition, int]) -> dict[Partition, int]:
    """Records between what is committed (durable, not merely fetched) and each assigned
    partition's high watermark, for partitions whose watermark is known."""
    out: dict[Partition, int] = {}
    try:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = committed.get(tp) or consumer.position(tp, timeout_ms=100)
            if position is not None:
                out[tp] = max(0, high - position)
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka: cannot read the lag: {exc!r}") from exc
    return out


def records_behind(consumer: Any, taken: dict[Partition, int]) -> dict[Partition, int]:
    """Records past this consumer's position in each assigned partition, for partitions
    that have any. The position is the one after the last record taken, else the
    committed offset, else the partition's beginning (``earliest``). ``ServiceUnavailable``
    when the broker cannot be asked."""
    try:
        return _records_behind(consumer, taken)
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka: cannot read offsets: {exc!r}") from exc


def _records_behind(consumer: Any, taken: dict[Partition, int]) -> dict[Partition, int]:
    assigned = list(consumer.assignment())
    if not assigned:
        return {}
    ends = consumer.end_offsets(assigned, timeout_ms=5_000)
    behind: dict[Partition, int] = {}
    starts: dict[Partition, int] | None = None
    for tp in assigned:
        position = taken.get(tp)
        if position is None:
            position = consumer.committed(tp, timeout_ms=5_000)
        if position is None:
            if starts is None:
                starts = consumer.beginning_offsets(assigned, timeout_ms=5_000)
            position = starts.get(tp, 0)
        waiting = ends.get(tp, 0) - position
        if waiting > 0:
            behind[tp] = waiting
    return behind


def _complete_pending_joins(made: KafkaConsumer) -> None:
    """Make the group coordinator finish a join it started (Java's ``rejoinNeededOrPending``).

    kafka-python 3.0.12 starts a rejoin when the leader sees the topics' metadata change,
    without raising its ``rejoin_needed`` flag (the bug Kafka fixed as KAFKA-9815). When the
    ``poll`` that sent the JoinGroup times out before the join completes (any short poll,
    here 100 ms), the leader's own assignment has meanwhile made the metadata check pass:
    the next poll sees no rejoin needed and never finishes the join. The member stays
    "rebalancing" for good: no heartbeats, its partitions gated as pending revocation, and
    nothing fetched. Seen here at every start where the server had just created its topics.
    A join under way (``rejoining``, set when it is prepared, cleared when it completes)
    counts as a rejoin needed, so the next poll carries it through."""
    coordinator = getattr(made, "_coordinator", None)
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    if need_rejoin is None or not hasattr(coordinator, "rejoining"):
        _log.warning("kafka_join_workaround_unavailable",
                     detail="kafka-python's coordinator changed; stalled consumers are rebuilt instead")
        return

    def need_rejoin_or_pending() -> bool:
        return bool(need_rejoin() or coordinator.rejoining)

    coordinator.need_rejoin = need_rejoin_or_pending


class Delivery:
    """``make`` builds the producer, and builds it again when one stalls: a kafka-python
    producer whose broker was killed and came back has been seen to keep its futures pending
    forever (no ack, no error, past its delivery timeout). A producer that completes no
    future for ``stall_s`` is closed and replaced, and what it held is sent again."""

    def __init__(self, make: Callable[[], KafkaProducer], wait_s: float = 5.0,
                 backoff_max_s: float = 10.0, stall_s: float = DELIVERY_TIMEOUT_MS / 1000 + 30,
                 name: str = "producer", bootstrap: Sequence[str] = ()) -> None:
        self.make = make
        self.producer = make()
        self.wait_s, self.backoff_max_s, self.stall_s = wait_s, backoff_max_s, stall_s
        self.stopping = threading.Event()
        self.condition = f"kafka ({name})"
        self.bootstrap = list(bootstrap)
        self.suspect = False  # a send failed since the last clean round: watch the producer closely

    def deliver(self, messages: Sequence[Outgoing]) -> None:
        start = time.monotonic()
        todo = list(messages)
        delay = 0.25
        while todo:
            futures = []
            failed: list[Outgoing] = []
            gone: list[tuple[Outgoing, BaseException]] = []
            suspects: list[Outgoing] = []
            for m in todo:
                try:
                    futures.append((m, self.producer.send(m.topic, key=m.key, value=m.value,
                                                          headers=m.headers)))
                except KafkaTimeoutError:  # no metadata within max_block_ms: Kafka is away
                    failed.append(m)
                except REFUSED as exc:  # checked by the producer before sending: certain
                    gone.append((m, exc))
            progress = time.monotonic()
            stalled = False
            for m, f in futures:
                if not stalled and not self._wait(f, progress):
                    stalled = True
                if not f.is_done:
                    failed.append(m)  # the stalled producer's: sent again by a new one
                    continue
                progress = time.monotonic()
                if f.failed() and isinstance(f.exception, REFUSED):
                    suspects.append(m)  # the one refused, or a neighbour aborted with it
                elif f.failed():
                    failed.append(m)
                else:
                    PRODUCED.labels(m.topic).inc()
            if suspects:
                self._replace()
                for m in suspects:
                    error = self._alone(m)
                    if error is None:
                        PRODUCED.labels(m.topic).inc()
                    elif isinstance(error, REFUSED):
                        gone.append((m, error))
                        self._replace()
                    else:
                        failed.append(m)
            if stalled:
                STALLS.inc()
                _log.error("kafka_producer_stalled", records=len(failed),
                           stalled_s=round(SUSPECT_STALL_S if self.suspect else self.stall_s),
                           after="sends failed or unanswered, a bootstrap server reachable" if self.suspect
                           else "no acknowledgement at all",
                           action="replacing the producer and sending again")
                self._replace()
            if failed:
                self.suspect = True
                error = next((f.exception for _, f in futures if f.is_done and f.failed()), None)
                CONDITIONS.problem(self.condition, "Kafka does not acknowledge: " + (
                    type(error).__name__ if error else "no answer (broker unreachable)"),
                    records=len(failed), topic=failed[0].topic, error=repr(error)[:300])
                _log.debug("kafka_delivery_failed", records=len(failed), topic=failed[0].topic,
                           error=repr(error) if error else "no acknowledgement (broker unreachable)",
                           retry_in_s=delay)
                for m in failed:
                    PRODUCE_RETRIES.labels(m.topic).inc()
                if self.stopping.wait(delay):
                    raise Stopped("stopping while Kafka had not acknowledged a delivery")
                delay = min(delay * 2, self.backoff_max_s)
            todo = failed + self._dead_letters(gone)
        self.suspect = False
        DELIVER_SECONDS.observe(time.monotonic() - start)
        CONDITIONS.clear(self.condition)

    def _alone(self, m: Outgoing) -> BaseException | None:
        """Send one message and wait for its answer: None when Kafka has it, else why not."""
        try:
            future = self.producer.send(m.topic, key=m.key, value=m.value, headers=m.headers)
        except (KafkaTimeoutError, *REFUSED) as exc:
            return exc
        if not self._wait(future, time.monotonic()):
            return KafkaTimeoutError("no answer")
        return future.exception if future.failed() else None

    def _wait(self, future: Any, since: float) -> bool:
        """Flush until ``future`` is done (True), or until the producer has completed
        nothing for ``stall_s`` since ``since`` (False). ``Stopped`` when the owner stops.

        After a failed send, or none acknowledged for ``2 × wait_s`` (``suspect``: the
        broker went away or hung), the bound is ``SUSPECT_STALL_S`` while a bootstrap server
        accepts connections: a kafka-python producer that lived through a broker restart or
        freeze was seen to complete nothing until replaced (90 s of a stalled uplink after
        every Kafka restart). A replacement that cannot bootstrap keeps the old producer."""
        while not future.is_done:
            try:
                self.producer.flush(timeout=self.wait_s)
            except KafkaTimeoutError:
                pass
            if self.stopping.is_set() and not future.is_done:
                raise Stopped("stopping while Kafka had not acknowledged a delivery")
            waited = time.monotonic() - since
            if not future.is_done and not self.suspect and waited > 2 * self.wait_s:
                self.suspect = True  # nothing acknowledged for a while: the broker is away or hung
            if not future.is_done and (waited > self.stall_s or (
                    self.suspect and waited > SUSPECT_STALL_S and self._reachable())):
                return False
        return True

    def _reachable(self) -> bool:
        """Whether a bootstrap server accepts a TCP connection now (1 s at most)."""
        for address in self.bootstrap:
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=1).close()
                return True
            except (OSError, ValueError):
                continue
        return False

    @staticmethod
    def _dead_letters(gone: list[tuple[Outgoing, BaseException]]) -> list[Outgoing]:
        """What Kafka refused for good, as dead letters (sent with the rest, never again as
        they were). A dead letter refused too is logged and dropped: nothing loops."""
        out = []
        for m, exc in gone:
            reason = f"kafka_{type(exc).__name__}"
            if m.topic.endswith(".dlq"):
                UNDELIVERABLE.labels(m.topic).inc()
                _log.error("kafka_dead_letter_refused", topic=m.topic, bytes=m.size, error=repr(exc)[:300])
                continue
            REFUSED_RECORDS.labels(m.topic, reason).inc()
            if (held := _refused_lines.allow((m.topic, reason))) is not None:
                _log.warning("kafka_message_refused", topic=m.topic, bytes=m.size, error=repr(exc)[:300],
                             action=f"sent to {m.topic}.dlq", suppressed=held)
            out.append(refused(m, reason, repr(exc)))
        return out

    def _replace(self) -> None:
        try:
            made = self.make()
        except KafkaError as exc:  # the broker away again: keep this one, the loop tries later
            _log.warning("kafka_producer_not_replaced", error=repr(exc)[:300])
            return
        old, self.producer = self.producer, made
        # Closing a stuck producer can block: let it go in the background.
        threading.Thread(target=_close_quietly, args=(old,), name="kafka-producer-close",
                         daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        _close_quietly(self.producer, 5)
        CONDITIONS.clear(self.condition, quiet=True)


def _close_quietly(producer: KafkaProducer, timeout: float = 0) -> None:
    try:
        producer.close(timeout=timeout)
    except (KafkaError, RuntimeError, OSError):
        pass


class KafkaStore:
    """The distributed deployment's ``RecordStore`` (edge/io/store.py) for the UplinkReceiver:
    measurements to the decoded topic, events and gap records to the events topic,
    quarantined messages raw to the raw topic, unreadable frames to ``<raw>.dlq``.
    ``write`` returns only when Kafka acknowledged every record (acks=all): then, and only
    then, the receiver confirms the batch to the gateway."""

    def __init__(self, cfg: KafkaConfig, client_id: str) -> None:
        self.topics = Topics(cfg.decoded_topic, cfg.raw_topic, cfg.events_topic)
        try:
            self.delivery = Delivery(lambda: producer(cfg, client_id), name="receiver",
                                     bootstrap=cfg.bootstrap_servers)
        except KafkaError as exc:
            raise unreachable(cfg, exc) from exc

    def write(self, batches: list[Batch]) -> None:
        messages: list[Outgoing] = []
        for batch in batches:
            messages += from_batch(batch, self.topics)
        self.delivery.deliver(messages)

    def reject(self, topic: str, frame: bytes, reason: str, detail: str) -> None:
        gateway = topic.split("/")[1] if topic.count("/") == 2 else None
        kept, detail = bounded_payload(frame, detail)
        self.delivery.deliver([raw(self.topics.raw + ".dlq", topic, kept, datetime.now(UTC), gateway,
                                   gateway=gateway, dlq_reason=reason, dlq_detail=detail)])

    def close(self) -> None:
        self.delivery.close()


def ensure_topics(cfg: KafkaConfig, client_id: str, extra: Sequence[str] = ()) -> list[str]:
    """Create the server's topics (and their dead-letter topics) that do not exist yet,
    with ``partitions``, ``replication_factor`` and ``max.message.bytes``; return the names
    created. ``ServiceError`` when Kafka is not reachable within ``connect_timeout_s``."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = [cfg.decoded_topic, cfg.raw_topic, cfg.events_topic, *extra]
    names += [n + ".dlq" for n in list(names)]
    try:
        admin = KafkaAdminClient(**_common(cfg, client_id), request_timeout_ms=10_000)
    except KafkaError as exc:
        raise unreachable(cfg, exc) from exc
    try:
        missing = sorted(set(names) - set(admin.list_topics()))
        if missing:
            try:
                admin.create_topics([NewTopic(n, cfg.partitions, cfg.replication_factor,
                                              topic_configs={"max.message.bytes": str(cfg.max_message_bytes)})
                                     for n in missing])
            except TopicAlreadyExistsError:
                pass  # another server process made them meanwhile
            # A consumer that joins its group before the broker serves the new topics'
            # metadata gets no partitions until its next metadata refresh: wait for them.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                described = admin.describe_topics(missing)
                if all(t.get("partitions") and not t.get("error_code") for t in described):
                    break
                time.sleep(0.2)
            _log.info("kafka_topics_created", topics=missing, partitions=cfg.partitions)
        return missing
    except KafkaError as exc:
        _log.warning("kafka_topics_unchecked", error=repr(exc))
        return []
    finally:
        admin.close()


class TopicReader:
    """Reads a topic outside any consumer group, for an outbox that must know what a dead
    predecessor already sent: ``end_offsets()`` before sending, ``find()`` after a restart."""

    def __init__(self, cfg: KafkaConfig, client_id: str, topic: str) -> None:
        self.topic = topic
        try:
            self.consumer = KafkaConsumer(**_common(cfg, client_id), group_id=None, enable_auto_commit=False,
                                          auto_offset_reset="earliest", consumer_timeout_ms=1000)
        except KafkaError as exc:
            raise unreachable(cfg, exc) from exc
        self.cfg = cfg

    def partitions(self) -> list[TopicPartition]:
        try:
            ids = self.consumer.partitions_for_topic(self.topic)
        except KafkaError as exc:
            raise unreachable(self.cfg, exc) from exc
        if not ids:
            raise ServiceUnavailable(f"Kafka has no partitions for {self.topic!r} (topic not created yet?)")
        return [TopicPartition(self.topic, p) for p in sorted(ids)]

    def end_offsets(self) -> dict[int, int]:
        try:
            ends = self.consumer.end_offsets(self.partitions())
        except KafkaError as exc:
            raise unreachable(self.cfg, exc) from exc
        return {tp.partition: offset for tp, offset in ends.items()}

    def find(self, since: dict[int, int], header: str, values: set[str], timeout_s: float = 30.0) -> set[str]:
        """Which of ``values`` some record from ``since`` (partition -> offset) on carries in
        its ``header``. Reads each partition up to the end it had when asked."""
        ends = self.end_offsets()
        todo = {TopicPartition(self.topic, p): o for p, o in since.items() if o < ends.get(p, 0)}
        found: set[str] = set()
        if not todo:
            return found
        self.consumer.assign(list(todo))
        for tp, offset in todo.items():
            self.consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"reading {self.topic!r} back took longer than {timeout_s:g} s")
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    found.update(v.decode("utf-8", "replace") for k, v in r.headers or () if k == header)
            for tp in list(todo):
                if self.consumer.position(tp) >= ends[tp.partition]:
                    del todo[tp]
        return found & values

    def close(self) -> None:
        try:
            self.consumer.close()
        except (KafkaError, RuntimeError, OSError):
            pass
