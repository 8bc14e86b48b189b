"""The sink's writes to PostgreSQL/TimescaleDB: one transaction per batch.

Measurements go in by binary COPY into a temporary staging table, then into
``iot_measurements`` in one of two ways:

- first a plain ``INSERT ... SELECT`` inside a savepoint: the common case, a batch of new
  rows (about 1.6× faster here than the speculative insertion of ``ON CONFLICT``);
- if that meets a row already stored (a replay: the process died between the database
  commit and the offset commit, or a gateway resent a batch the receiver had already
  produced), back to the savepoint and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``,
  which inserts only what is new. A row that did not go in because a stored row has its key
  and another value is a different reading, not a replay: it goes to
  ``measurement_conflicts`` (once per distinct value) and is counted in
  ``edge_conflicting_readings_total``; the first way never meets one.

On both storages (plain PostgreSQL and TimescaleDB) the hourly rollup is updated in the
same transaction from exactly the rows inserted: all of staging on the first way, the
``RETURNING`` rows on the second, so it stays exact under replays and at any moment.
Events, gap records and device state are written in the same transaction.

Several writers (the sink's ``writers``, or several sink processes) may write at once.
Their upserts (rollup, device state, events) lock rows in key order, so two transactions
touching the same rows wait for each other instead of deadlocking; a deadlock that still
happens (two replays of the same rows in different orders) is an ``OperationalError``,
which the sink retries. A day's partition created by two writers at the same moment is
created once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

import psycopg
from prometheus_client import Counter

from edge.codecs.stream import Row
from edge.config import PostgresConfig
from edge.errors import SchemaNotReady, ServiceUnavailable
from edge.io.pg import connect_migrated, recorded_storage, timescale_problem, timescale_version, translated
from edge.io.store import CONFLICTS

ANSWERS = Counter("edge_sink_command_answers", "Command answers (acks, expiries, deliveries) that moved a "
                  "device_commands row on")
UNMATCHED = Counter("edge_sink_command_answers_unmatched", "Command answers for no command the server sent "
                    "(unknown or malformed cmd_id), kept in device_events only", ["why"])

# What an answer makes of a command still open; a final state never changes again.
OPEN = ("pending", "sent", "delivered")
FINAL = ("accepted", "rejected", "error", "unsupported", "expired")
_ANSWER = """UPDATE device_commands AS c SET status = a.result, detail = coalesce(a.detail, c.detail),
    answered_at = CASE WHEN a.result = 'delivered' THEN c.answered_at ELSE a.at END, status_at = now()
FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::timestamptz[]) AS a(cmd_id, result, detail, at)
WHERE c.cmd_id = a.cmd_id AND c.status = ANY(%s)
RETURNING c.cmd_id"""
_OTA = """UPDATE device_commands AS c SET ota_state = a.state, ota_progress = a.progress, status_at = now()
FROM unnest(%s::uuid[], %s::text[], %s::float8[]) AS a(cmd_id, state, progress)
WHERE c.cmd_id = a.cmd_id AND (c.ota_state IS NULL OR c.ota_state NOT IN ('success', 'failed'))
RETURNING c.cmd_id"""

COLUMNS = "time, device_id, connector_mode, connector, pin_position, label, value, unit, topic, source"
TYPES = ["timestamptz", "text", "text", "int2", "int4", "text", "float8", "text", "text", "text"]
KEY = "device_id, connector_mode, pin_position, label"

_INSERT_ALL = f"INSERT INTO iot_measurements ({COLUMNS}) SELECT {COLUMNS} FROM edge_staging"
_INSERT_NEW = f"{_INSERT_ALL} ON CONFLICT DO NOTHING"


def _rollup(rows: str) -> str:
    return f"""INSERT INTO iot_measurements_hourly AS h (bucket, {KEY}, n, sum, min, max)
    SELECT date_trunc('hour', time, 'UTC'), {KEY}, count(*), sum(value), min(value), max(value)
    FROM {rows} GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 3, 4, 5, 1
    ON CONFLICT ({KEY}, bucket) DO UPDATE SET n = h.n + EXCLUDED.n, sum = h.sum + EXCLUDED.sum,
        min = least(h.min, EXCLUDED.min), max = greatest(h.max, EXCLUDED.max)"""


_ROLLUP_ALL = _rollup("edge_staging")
_CONFLICTS = f"""INSERT INTO measurement_conflicts (time, {KEY}, connector, value, stored_value, unit, topic, source)
SELECT s.time, s.device_id, s.connector_mode, s.pin_position, s.label, s.connector, s.value, m.value,
       s.unit, s.topic, s.source
FROM edge_staging s JOIN iot_measurements m USING ({KEY}, time)
WHERE m.value <> s.value ORDER BY 2, 3, 4, 5, 1, 7
ON CONFLICT DO NOTHING"""
_INSERT_NEW_WITH_ROLLUP = f"""WITH ins AS ({_INSERT_NEW} RETURNING time, {KEY}, value),
roll AS ({_rollup("ins")})
SELECT count(*) FROM ins"""

_STATE = """INSERT INTO device_state AS s (device_id, first_seen, last_seen, status, status_at,
    fw_version, fw_at, last_seq, last_event, event_at, gateway_id)
VALUES (%(device)s, %(first)s, %(last)s, %(status)s, %(status_at)s, %(fw)s, %(fw_at)s, %(seq)s, %(event)s,
        %(event_at)s, %(gw)s)
ON CONFLICT (device_id) DO UPDATE SET
    first_seen = least(s.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(s.last_seen, EXCLUDED.last_seen),
    status = CASE WHEN EXCLUDED.status_at >= coalesce(s.status_at, '-infinity')
                  THEN EXCLUDED.status ELSE s.status END,
    status_at = greatest(s.status_at, EXCLUDED.status_at),
    fw_version = CASE WHEN EXCLUDED.fw_at >= coalesce(s.fw_at, '-infinity')
                      THEN coalesce(EXCLUDED.fw_version, s.fw_version) ELSE s.fw_version END,
    fw_at = greatest(s.fw_at, EXCLUDED.fw_at),
    last_seq = CASE WHEN (EXCLUDED.event_at, coalesce(EXCLUDED.last_seq, -1))
                         >= (coalesce(s.event_at, '-infinity'), coalesce(s.last_seq, -1))
                    THEN coalesce(EXCLUDED.last_seq, s.last_seq) ELSE s.last_seq END,
    last_event = CASE WHEN (EXCLUDED.event_at, coalesce(EXCLUDED.last_seq, -1))
                           >= (coalesce(s.event_at, '-infinity'), coalesce(s.last_seq, -1))
                      THEN EXCLUDED.last_event ELSE s.last_event END,
    event_at = greatest(s.event_at, EXCLUDED.event_at),
    gateway_id = coalesce(EXCLUDED.gateway_id, s.gateway_id),
    updated_at = now()"""

REPLAYS = Counter("edge_sink_batches_with_stored_rows",
                  "Batches that held rows already stored (replays, resends): written by ON CONFLICT")


class SinkDb:
    def __init__(self, cfg: PostgresConfig) -> None:
        self.cfg = cfg
        self.conn: psycopg.Connection | None = None
        self.partitions: set[date] = set()

    def connect(self) -> None:
        conn = connect_migrated(self.cfg)
        try:
            if recorded_storage(conn) == "timescaledb":
                problem = timescale_problem(timescale_version(conn) or "")
                if problem:  # refused here too: an extension updated down, or migrated by an older edge
                    raise SchemaNotReady(f"database {self.cfg.dbname}: {problem}")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS edge_staging "
                         "(LIKE iot_measurements INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def write(self, rows: Sequence[Row], events: Sequence[dict[str, Any]]) -> int:
        """One transaction; returns the number of measurement rows actually inserted.
        ``ServiceUnavailable`` (retry later), ``ServiceRefused`` (this batch, for good) or
        ``SchemaNotReady``."""
        try:
            with translated(f"writing {len(rows)} rows and {len(events)} events"):
                return self._write(rows, events)
        except ServiceUnavailable:
            self.close()  # a broken connection is not reused
            raise

    def _write(self, rows: Sequence[Row], events: Sequence[dict[str, Any]]) -> int:
        if self.conn is None or self.conn.closed:
            self.connect()
        conn = self.conn
        assert conn is not None
        self._partitions(conn, rows)
        inserted = conflicts = 0
        with conn.transaction():
            if rows:
                with conn.cursor() as cur:
                    with cur.copy(f"COPY edge_staging ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
                        cp.set_types(TYPES)
                        for row in rows:
                            cp.write_row(row)
                    inserted, conflicts = self._insert(conn, cur)
            if events:
                self._events(conn, events)
            self._state(conn, rows, events)
        if conflicts:
            CONFLICTS.inc(conflicts)
        return inserted

    def _insert(self, conn: psycopg.Connection, cur: psycopg.Cursor) -> tuple[int, int]:
        """(rows inserted, conflicting readings newly kept)."""
        try:
            with conn.transaction():  # a savepoint
                inserted = cur.execute(_INSERT_ALL).rowcount
        except psycopg.errors.UniqueViolation:
            REPLAYS.inc()
            inserted = cur.execute(_INSERT_NEW_WITH_ROLLUP).fetchone()[0]
            return inserted, cur.execute(_CONFLICTS).rowcount
        cur.execute(_ROLLUP_ALL)
        return inserted, 0

    def _partitions(self, conn: psycopg.Connection, rows: Iterable[Row]) -> None:
        days = {r[0].date() for r in rows} - self.partitions
        for day in sorted(days):
            try:
                conn.execute("SELECT edge_ensure_partition(%s)", (day,))
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                # Another writer created it at the same moment: CREATE TABLE IF NOT EXISTS
                # is not safe against a concurrent creation of the same table.
                if conn.execute("SELECT to_regclass(%s)",
                                (f"iot_measurements_{day:%Y%m%d}",)).fetchone()[0] is None:
                    raise
            self.partitions.add(day)

    @staticmethod
    def _events(conn: psycopg.Connection, events: Sequence[dict[str, Any]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO device_events (event_key, time, device_id, type, gateway_id, body) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                sorted([(e["key"], e["time"], e["device_id"], e["type"], e.get("gateway"),
                         json.dumps(e, ensure_ascii=False)) for e in events],
                       key=lambda row: row[0]))  # key order: see above
            _answers(conn, events)
            gaps = sorted((e for e in events if e["type"] == "gap"), key=lambda e: e["key"])
            if gaps:
                cur.executemany(
                    "INSERT INTO sequence_gaps (gateway_id, boot_epoch, first_seq, last_seq, count, "
                    "reason, time) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(e["gateway"], int(e["key"].split("/")[-2]), e["first_seq"], e["last_seq"],
                      e["count"], e["reason"], e["time"]) for e in gaps])

    @staticmethod
    def _state(conn: psycopg.Connection, rows: Sequence[Row], events: Sequence[dict[str, Any]]) -> None:
        state: dict[str, dict[str, Any]] = {}

        def seen(device: str, t: datetime | str) -> dict[str, Any]:
            if isinstance(t, str):
                t = datetime.fromisoformat(t)
            s = state.get(device)
            if s is None:
                s = state[device] = {"device": device, "first": t, "last": t, "status": None,
                                     "status_at": None, "fw": None, "fw_at": None, "seq": None,
                                     "event": None, "event_at": None, "gw": None}
            else:
                s["first"], s["last"] = min(s["first"], t), max(s["last"], t)
            return s

        for r in rows:
            s = state.get(r[1])
            if s is None:
                s = seen(r[1], r[0])
                gw = r[9].split("/", 1)[0]
                s["gw"] = None if gw.startswith("kafka:") else gw
            elif r[0] < s["first"]:
                s["first"] = r[0]
            elif r[0] > s["last"]:
                s["last"] = r[0]
        for e in events:
            if e["type"] in ("gap", "device_gap"):  # about records, not the device's own state
                continue
            s = seen(e["device_id"], e["time"])
            s["gw"] = e.get("gateway") or s["gw"]
            at, seq = datetime.fromisoformat(e["time"]), e.get("seq")
            # The newest by device time, then sequence, whatever the order of arrival.
            if s["event_at"] is None or (at, -1 if seq is None else seq) >= (
                    s["event_at"], -1 if s["seq"] is None else s["seq"]):
                s["event"], s["event_at"] = e["type"], at
                s["seq"] = seq if seq is not None else s["seq"]
            if e["type"] == "hello" and (s["fw_at"] is None or at >= s["fw_at"]):
                s["fw"], s["fw_at"] = e.get("fw_version"), at
            elif e["type"] == "status" and (s["status_at"] is None or at >= s["status_at"]):
                s["status"], s["status_at"] = e.get("status"), at
        if state:
            with conn.cursor() as cur:
                cur.executemany(_STATE, [state[device] for device in sorted(state)])  # key order


def _answers(conn: psycopg.Connection, events: Sequence[dict[str, Any]]) -> None:
    """Move the device_commands rows the batch's answers are about: a gateway's ``delivered``
    first (only from pending or sent), then final results (only from an open state), each
    command's earliest final answer winning; OTA progress onto its command. A replayed
    answer finds its row final and changes nothing."""
    acks: dict[str, list[dict[str, Any]]] = {"delivered": [], "final": []}
    ota = []
    for e in sorted(events, key=lambda e: (e["time"], e["key"])):
        if e["type"] not in ("command_ack", "ota_status"):
            continue
        try:
            cmd_id = str(uuid.UUID(str(e.get("cmd_id"))))
        except ValueError:
            UNMATCHED.labels("malformed_cmd_id").inc()
            continue
        if e["type"] == "ota_status":
            progress = e.get("progress_pct")
            ota.append((cmd_id, str(e.get("ota_state"))[:40],
                        float(progress) if type(progress) in (int, float) and abs(progress) < 1e6 else None))
        elif e.get("result") == "delivered":
            acks["delivered"].append({**e, "cmd_id": cmd_id})
        elif e.get("result") in FINAL:
            acks["final"].append({**e, "cmd_id": cmd_id})
    for kind, allowed in (("delivered", ["pending", "sent"]), ("final", list(OPEN))):
        first: dict[str, dict[str, Any]] = {}
        for e in acks[kind]:
            first.setdefault(e["cmd_id"], e)
        if not first:
            continue
        todo = sorted(first.values(), key=lambda e: e["cmd_id"])  # lock order
        moved = {str(r[0]) for r in conn.execute(_ANSWER, (
            [e["cmd_id"] for e in todo], [e["result"] for e in todo],
            [None if e.get("detail") is None else str(e["detail"])[:1000] for e in todo],
            [e["time"] for e in todo], allowed)).fetchall()}
        ANSWERS.inc(len(moved))
        unknown = [c for c in first if c not in moved]
        if unknown:
            known = {str(r[0]) for r in conn.execute(
                "SELECT cmd_id FROM device_commands WHERE cmd_id = ANY(%s::uuid[])", (unknown,)).fetchall()}
            if len(unknown) > len(known):
                UNMATCHED.labels("unknown_command").inc(len(unknown) - len(known))
    if ota:
        last = sorted({c: (c, state, progress) for c, state, progress in ota}.values())  # the latest per command
        conn.execute(_OTA, ([c for c, _, _ in last], [s for _, s, _ in last], [p for _, _, p in last]))
