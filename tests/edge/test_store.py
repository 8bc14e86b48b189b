"""The single-node store (edge/io/store.py): what it keeps when two readings share a key."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from twins import TWINS, Twins, readings

from edge.codecs.records import CardRead, Quarantined, Status
from edge.codecs.uplink import Batch
from edge.io.store import SqliteStore


def conflicts_counted() -> float:
    return REGISTRY.get_sample_value("edge_conflicting_readings_total") or 0.0


def batch(first_seq: int, records: list) -> Batch:
    return Batch("gw", 7, first_seq, records, list(range(first_seq, first_seq + len(records))))


@pytest.mark.parametrize("twins", TWINS, ids=lambda t: t.family)
@pytest.mark.parametrize("together", [False, True], ids=["apart", "one-batch"])
def test_a_second_reading_with_a_stored_key_and_another_value_is_kept_as_a_conflict_and_counted(
        tmp_path, twins: Twins, together: bool):
    first, second = readings(twins.topic, twins.first), readings(twins.topic, twins.second)
    store = SqliteStore(str(tmp_path / "store.db"))
    before = conflicts_counted()
    try:
        if together:
            store.write([batch(0, first), batch(len(first), second)])
        else:
            store.write([batch(0, first)])
            store.write([batch(len(first), second)])
        assert conflicts_counted() - before == twins.differing
        store.write([batch(0, first), batch(len(first), second)])  # a replay of both: nothing new
        assert conflicts_counted() - before == twins.differing
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "store.db")
    stored = {(r[0], r[1]): r[2] for r in db.execute("SELECT label, time, value FROM iot_measurements")}
    assert len(stored) == len(first)
    kept = db.execute("SELECT label, value, stored_value, seq FROM measurement_conflicts").fetchall()
    assert len(kept) == twins.differing
    by_label = {m.label: m.value for m in second}
    for label, value, stored_value, seq in kept:
        assert value == by_label[label] and stored_value != value and seq >= len(first)
    # Every value sent is somewhere: stored, or kept as a conflict.
    values = {v for v in stored.values()} | {k[1] for k in kept}
    assert {m.value for m in first + second} <= values


def test_the_same_reading_twice_is_one_row_and_no_conflict(tmp_path):
    twins = TWINS[0]
    first = readings(twins.topic, twins.first)
    store = SqliteStore(str(tmp_path / "store.db"))
    before = conflicts_counted()
    try:
        store.write([batch(0, first), batch(10, first)])  # one reading by two paths
    finally:
        store.close()
    assert conflicts_counted() == before
    db = sqlite3.connect(tmp_path / "store.db")
    assert db.execute("SELECT count(*) FROM iot_measurements").fetchone() == (len(first),)
    assert db.execute("SELECT count(*) FROM measurement_conflicts").fetchone() == (0,)


def test_an_event_or_a_quarantined_message_redelivered_under_a_new_sequence_is_one_row(tmp_path):
    """A gateway that crashed between its buffer's commit and the PUBACK gets the message
    again and buffers it under new sequence numbers: its identity is the same."""
    t = datetime(2026, 7, 26, 10, tzinfo=UTC)
    card = CardRead(t, "f2-1", "stat/f2-1/access-mode/1/reader-1", "access-mode", 1, 1, "04A1B2", "rfid")
    status = Status(t, "pm-1", "iot/pm-1/status", None, "offline")
    bad = Quarantined(t, "iot/pm-1/telemetry", b"\xff\xfe", "bad_json", "not JSON", None, 0)
    store = SqliteStore(str(tmp_path / "store.db"))
    try:
        store.write([batch(0, [card, status, bad])])
        store.write([batch(3, [card, status, bad]), batch(9, [card])])  # after the crash; twice in flight
        other = CardRead(t, "f2-1", "stat/f2-1/access-mode/1/reader-1", "access-mode", 1, 1, "04A1B3", "rfid")
        store.write([batch(20, [other, bad._replace(payload=b"\xff")])])  # other content: other records
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "store.db")
    assert sorted(db.execute("SELECT type, count(*) FROM events GROUP BY 1")) == [("card_read", 2), ("status", 1)]
    assert db.execute("SELECT count(*) FROM quarantine").fetchone() == (2,)
