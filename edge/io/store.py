"""Where the server puts what gateways send: the interface, and the single-node store.

``RecordStore.write(batch)`` returns only once the records are durable; the receiver
confirms the batch to the gateway after that. Writes are idempotent: measurements are
unique on (device_id, connector_mode, pin_position, label, time), as ``iot_measurements``;
events and quarantined messages on their identity (``codecs.records.identity``: device,
type, device time, content digest; a digest of topic and payload), so the same event
redelivered after a gateway crash is one row; gaps, the gateway's own records, on
(gateway, boot epoch, sequence). A resent batch therefore changes nothing. A measurement
whose key is stored with another value is a different reading: it is kept in
``measurement_conflicts`` (once per distinct value) and counted in
``edge_conflicting_readings_total``, never dropped silently. The Kafka/PostgreSQL store of
the distributed deployment (edge/io/sink_db.py) implements the same rules.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

import sqlite_utils
from prometheus_client import Counter

from edge.codecs.errors import CodecError
from edge.codecs.limits import bounded_payload, safe_text
from edge.codecs.records import Event, Gap, Measurement, Quarantined, identity, iso, quarantine_identity
from edge.codecs.uplink import Batch
from edge.io.sqlite import immediate, insert_rows, open_wal

CONFLICTS = Counter("edge_conflicting_readings",
                    "Readings that came with the key of a stored reading and another value, kept as conflicts")
_STORED_VALUE = ("SELECT value FROM iot_measurements WHERE device_id = ? AND IFNULL(connector_mode, '') = "
                 "IFNULL(?, '') AND IFNULL(pin_position, -1) = IFNULL(?, -1) AND label = ? AND time = ?")


def confirmation(batch: Batch) -> bytes:
    """What a receiver answers on edge/<gateway>/ack once ``batch`` is durable."""
    return json.dumps({"boot_epoch": batch.boot_epoch, "first_seq": batch.first_seq,
                       "count": len(batch.records), "status": "ok"}).encode()


def refusal(boot_epoch: int, first_seq: int, count: int, error: CodecError) -> bytes:
    """What a receiver answers for a frame it refuses for good, once it kept it."""
    return json.dumps({"boot_epoch": boot_epoch, "first_seq": first_seq, "count": count,
                       "status": "rejected", "reason": error.reason,
                       "detail": safe_text(error.describe(), 500)}).encode()


class RecordStore(Protocol):
    """Called from the receiver actor's thread only."""

    def write(self, batches: list[Batch]) -> None:
        """Store every record of the batches durably (idempotently), or raise."""

    def reject(self, topic: str, frame: bytes, reason: str, detail: str) -> None:
        """Keep a frame that could not be read, with why."""

    def close(self) -> None: ...


class SqliteStore:
    """The single-node measurement store (what ``edge demo`` and a small site run)."""

    def __init__(self, path: str, durability: str = "power-safe") -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = open_wal(path, durability, shared=True)
        db = sqlite_utils.Database(self.conn)
        source = {"gateway_id": str, "boot_epoch": int, "seq": int}
        db["iot_measurements"].create(
            {"time": str, "device_id": str, "connector_mode": str, "connector": int,
             "pin_position": int, "label": str, "value": float, "unit": str, "topic": str, **source},
            if_not_exists=True)
        # NULLs are distinct in a SQLite unique index: key on IFNULL so v2 records dedup too.
        self.conn.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS iot_measurements_key ON iot_measurements "
            "(device_id, IFNULL(connector_mode, ''), IFNULL(pin_position, -1), label, time)")
        for name in ("events", "quarantine", "gaps"):
            db[name].create({**source, "time": str, "type": str, "body": str},
                            pk=("gateway_id", "boot_epoch", "seq"), if_not_exists=True)
            if "key" not in db[name].columns_dict:  # stores made before identities: rows keep NULL
                db[name].add_column("key", str)
            self.conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {name}_key ON {name} (key)")
        db["measurement_conflicts"].create(
            {"time": str, "device_id": str, "connector_mode": str, "connector": int, "pin_position": int,
             "label": str, "value": float, "stored_value": float, "unit": str, "topic": str, **source,
             "seen_at": float}, if_not_exists=True)
        self.conn.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS measurement_conflicts_key ON measurement_conflicts "
            "(device_id, IFNULL(connector_mode, ''), IFNULL(pin_position, -1), label, time, value)")
        db["rejected_frames"].create({"id": int, "received_at": float, "topic": str, "frame": bytes,
                                      "reason": str, "detail": str}, pk="id", if_not_exists=True)

    def write(self, batches: list[Batch]) -> None:
        """All the batches in one transaction: one fsync for everything waiting."""
        measurements: list[tuple] = []
        others: dict[str, list[tuple]] = {"events": [], "quarantine": [], "gaps": []}
        for batch in batches:
            self._rows(batch, measurements, others)
        conn = self.conn
        conflicts = 0
        with immediate(conn):
            before = conn.total_changes
            insert_rows(conn, "INSERT OR IGNORE INTO iot_measurements (time, device_id, connector_mode, "
                              "connector, pin_position, label, value, unit, topic, gateway_id, boot_epoch, seq)",
                        measurements)
            if conn.total_changes - before < len(measurements):  # a replay, or a key met twice
                conflicts = self._conflicts(measurements)
            for table, rows in others.items():
                insert_rows(conn, f"INSERT OR IGNORE INTO {table} (gateway_id, boot_epoch, seq, time, type, body, "
                                  "key)", rows)
        if conflicts:
            CONFLICTS.inc(conflicts)

    def _conflicts(self, measurements: list[tuple]) -> int:
        """Keep the rows whose key is stored with another value; how many were new."""
        conn, kept, now = self.conn, [], time.time()
        for row in measurements:
            t, device, mode, _, pin, label, value = row[:7]
            stored = conn.execute(_STORED_VALUE, (device, mode, pin, label, t)).fetchone()
            if stored is not None and stored[0] != value:
                kept.append((*row[:7], stored[0], *row[7:], now))
        if not kept:
            return 0
        before = conn.total_changes
        insert_rows(conn, "INSERT OR IGNORE INTO measurement_conflicts (time, device_id, connector_mode, "
                          "connector, pin_position, label, value, stored_value, unit, topic, gateway_id, "
                          "boot_epoch, seq, seen_at)", kept)
        return conn.total_changes - before

    @staticmethod
    def _rows(batch: Batch, measurements: list[tuple], others: dict[str, list[tuple]]) -> None:
        gw, boot = batch.gateway_id, batch.boot_epoch
        times: dict[object, str] = {}
        for seq, r in zip(batch.seqs, batch.records, strict=True):
            if type(r) is Measurement:
                t = times.get(r.time)
                if t is None:
                    t = times[r.time] = iso(r.time)
                measurements.append((t, r.device_id, r.connector_mode, r.connector,
                                     r.pin_position, r.label, r.value, r.unit, r.topic, gw, boot, seq))
            elif isinstance(r, Event | Quarantined | Gap):
                if isinstance(r, Event):
                    table, key = "events", identity(r)
                elif type(r) is Quarantined:
                    table, key = "quarantine", quarantine_identity(r)
                else:
                    table, key = "gaps", f"{gw}/{boot}/{seq}"
                doc = r.to_json()
                others[table].append((gw, boot, seq, doc["time"], doc["type"],
                                      json.dumps(doc, ensure_ascii=False, default=str), key))

    def reject(self, topic: str, frame: bytes, reason: str, detail: str) -> None:
        kept, detail = bounded_payload(frame, detail)
        with self.conn:
            self.conn.execute("INSERT INTO rejected_frames (received_at, topic, frame, reason, detail) "
                              "VALUES (?, ?, ?, ?, ?)", (time.time(), topic, kept, reason, detail))

    def measurements(self) -> list[tuple[str, str, str, float]]:
        """Every measurement row as (device, time, label, value): what a ledger compares
        with what was sent."""
        return self.conn.execute("SELECT device_id, time, label, value FROM iot_measurements").fetchall()

    def count_events(self, kind: str) -> int:
        return self.conn.execute("SELECT count(*) FROM events WHERE type = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        self.conn.close()
