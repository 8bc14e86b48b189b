"""TimescaleSink: ``decoded_iot_data`` and ``device_events`` into PostgreSQL/TimescaleDB.

A consumer group member (actors/consuming.py): batches by size and time, parses a batch on
the actor's thread while the batches before it are written, writes it in one database
transaction on a writer thread (edge/io/sink_db.py: binary COPY into staging, then INSERT),
and commits the Kafka offsets only after the database committed, in batch order.

``writers`` (default 2) batches are written at once, each on its own connection: most of
a batch's time is PostgreSQL's insert work (the primary key's B-tree above all), which
one connection does on one core. The rows are keyed and the rollup and device-state
upserts commute, so the order of the transactions does not matter; the upserts lock
their rows in key order, so two transactions wait for each other but never deadlock.

- The database away (connection refused, shut down, failover): the batch is kept, the
  partitions paused, the write retried with backoff; nothing is committed meanwhile.
- Every row is checked before it is written (``edge.codecs.stream``: the gateway's record
  checks): a row the database could not take (a NUL in a label, a pin beyond ``integer``)
  goes to ``<topic>.dlq`` on its own, as a one-row envelope, and the rows of the same Kafka
  record are stored. A record that is not what the topic carries (not a measurements
  envelope, an event without its fields) goes there at once.
- A batch the database still refuses is written record by record; a record refused
  ``max_attempts`` times is split down to its rows, and only the rows refused alone go to
  the DLQ, with the SQLSTATE and message.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from prometheus_client import Counter, Histogram

from edge.actors.consuming import ConsumingActor
from edge.codecs import stream
from edge.codecs.errors import CodecError
from edge.config import KafkaConfig, PostgresConfig, SinkConfig
from edge.errors import ServiceRefused, ServiceUnavailable
from edge.io.kafka import KafkaRecord
from edge.io.sink_db import SinkDb
from edge.runtime import log
from edge.runtime.actor import ActorContext

_log = log.get(__name__)

ROWS = Counter("edge_sink_rows", "Measurement rows written (inserted) into iot_measurements")
DUPLICATES = Counter("edge_sink_rows_duplicate", "Rows already stored (a replay), skipped by key")
EVENTS = Counter("edge_sink_events", "Device events written")
DB_SECONDS = Histogram("edge_sink_db_write_seconds", "One database transaction of the sink",
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_ROWS = Histogram("edge_sink_batch_rows", "Measurement rows per database transaction",
                       buckets=(1, 10, 100, 500, 1000, 5000, 10000, 20000, 50000))

_Parsed = tuple[KafkaRecord, list[stream.Row], list[dict[str, Any]]]
_Prepared = tuple[list[_Parsed], list[stream.Outgoing]]


class TimescaleSink(ConsumingActor):
    retryable = (ServiceUnavailable,)

    def __init__(self, ctx: ActorContext, kafka: KafkaConfig, postgres: PostgresConfig,
                 cfg: SinkConfig, client_id: str) -> None:
        super().__init__(ctx, kafka, cfg.group, (kafka.decoded_topic, kafka.events_topic), client_id,
                         cfg.batch_rows, cfg.batch_ms, cfg.retry_initial_s, cfg.retry_max_s,
                         writers=cfg.writers)
        self.cfg = cfg
        self.all_dbs = [SinkDb(postgres) for _ in range(cfg.writers)]
        self.dbs: queue.SimpleQueue[SinkDb] = queue.SimpleQueue()  # one per writer thread at a time
        for db in self.all_dbs:
            self.dbs.put(db)
        self.dead_lock = threading.Lock()  # one writer at a time hands dead letters to Kafka

    def close(self) -> None:
        super().close()
        for db in self.all_dbs:
            db.close()

    def prepare(self, records: list[KafkaRecord]) -> _Prepared:
        parsed: list[_Parsed] = []
        dead: list[stream.Outgoing] = []
        for rec in records:
            try:
                if rec.topic == self.kafka.events_topic:
                    parsed.append((rec, [], [stream.read_event(rec.value)]))
                    continue
                rows, bad = stream.read_measurements(rec.value)
            except CodecError as exc:
                dead.append(self.dead_letter(rec, exc.reason, exc.message, exc.field))
                continue
            parsed.append((rec, rows, []))
            dead += [self.dead_letter(rec, exc.reason, exc.message, exc.field, value=value)
                     for value, exc in bad]
        return parsed, dead

    def process(self, prepared: _Prepared) -> None:
        parsed, dead = prepared
        dead = list(dead)
        try:
            self._write([r for _, rows, _ in parsed for r in rows], [e for _, _, ev in parsed for e in ev])
        except ServiceRefused as exc:
            _log.warning("sink_batch_refused", records=len(parsed), error=str(exc),
                         action="writing each record alone")
            dead += self._isolate(parsed)
        if dead:
            assert self.delivery is not None
            with self.dead_lock:
                self.delivery.deliver(dead)  # before the offsets move past them

    def _write(self, rows: list[stream.Row], events: list[dict[str, Any]]) -> None:
        db = self.dbs.get()
        try:
            start = time.monotonic()
            inserted = db.write(rows, events)
            DB_SECONDS.observe(time.monotonic() - start)
        finally:
            self.dbs.put(db)
        BATCH_ROWS.observe(len(rows))
        ROWS.inc(inserted)
        DUPLICATES.inc(len(rows) - inserted)
        EVENTS.inc(len(events))

    def _isolate(self, parsed: list[_Parsed]) -> list[stream.Outgoing]:
        dead = []
        for rec, rows, events in parsed:
            error: ServiceRefused | None = None
            for _ in range(self.cfg.max_attempts):
                try:
                    self._write(rows, events)
                    error = None
                    break
                except ServiceRefused as exc:
                    error = exc
            if error is None:
                continue
            if len(rows) <= 1 or events:
                dead.append(self.dead_letter(rec, error.code, error.detail, None,
                                             attempts=self.cfg.max_attempts))
                continue
            for row, exc in self._refused_rows(rows):
                dead.append(self.dead_letter(rec, exc.code, exc.detail, "row",
                                             value=stream.envelope([row]), source=row[9]))
        return dead

    def _refused_rows(self, rows: list[stream.Row]) -> list[tuple[stream.Row, ServiceRefused]]:
        """Write ``rows`` in halves until each refused row stands alone; return those."""
        try:
            self._write(rows, [])
            return []
        except ServiceRefused as exc:
            if len(rows) == 1:
                return [(rows[0], exc)]
        half = len(rows) // 2
        return self._refused_rows(rows[:half]) + self._refused_rows(rows[half:])

