"""The buffer's storage logic, without threads: identities, leases, quota, corruption."""

from __future__ import annotations

import msgpack
import pytest
from fakes import Clocks

from edge.actors.buffer import PRIORITY_HIGH, PRIORITY_TELEMETRY, BufferDB, Entry
from edge.codecs import uplink
from edge.codecs.records import Gap
from edge.io import buffer_db


def entries(n, priority=PRIORITY_TELEMETRY, size=100):
    return tuple(Entry(priority, msgpack.packb([0, i, "x" * size])) for i in range(n))


@pytest.fixture
def db(tmp_path):
    b = BufferDB(str(tmp_path / "buffer.db"))
    yield b
    b.close()


def test_records_get_consecutive_sequences_that_survive_a_restart(tmp_path):
    path = str(tmp_path / "b.db")
    first = BufferDB(path)
    assert first.append(entries(3), {"pm-1": (7, "boot")}, generation=1, batch=1)
    assert first.boot_epoch == 1 and first.next_seq == 4
    first.close()
    again = BufferDB(path)
    assert again.boot_epoch == 2  # every start is a new boot epoch
    assert again.next_seq == 4 and again.depth == 3
    assert again.seq_state() == {"pm-1": (7, "boot")}  # committed with the records
    leased = again.lease(10)
    assert leased.seqs == (1, 2, 3) and leased.boot_epoch == 1
    again.close()


def test_message_fingerprints_are_committed_with_their_batch_and_the_oldest_let_go(tmp_path, monkeypatch):
    monkeypatch.setattr(buffer_db, "RECENT_KEPT", 10)
    path = str(tmp_path / "b.db")
    first = BufferDB(path)
    assert first.append(entries(2), {}, 1, 1, fingerprints=(1, 2**64 - 1))
    assert first.recent() == (1, 2**64 - 1)
    first.quota_bytes = 0  # refused by the quota: its fingerprints are not kept either
    assert not first.append(entries(1), {}, 1, 2, fingerprints=(3,))
    first.close()
    again = BufferDB(path)
    assert again.recent() == (1, 2**64 - 1)  # across a restart
    for batch in range(2, 8):  # 6 batches of 3: the rows before the last 10 go
        assert again.append(entries(3), {}, 1, batch, fingerprints=tuple(range(batch * 10, batch * 10 + 3)))
    kept = again.recent()
    assert len(kept) >= 10 and kept[-3:] == (70, 71, 72) and 1 not in kept
    again.close()
    assert BufferDB(path).recent() == kept


def test_a_lease_takes_priority_records_first_and_never_twice(db):
    db.append(entries(3), {}, 1, 1)
    db.append(entries(2, PRIORITY_HIGH), {}, 1, 2)
    first = db.lease(3)
    assert first.seqs == (1, 4, 5)  # class 0 (4, 5) first, then the oldest telemetry
    second = db.lease(10)
    assert second.seqs == (2, 3)
    assert db.lease(10) is None
    db.rewind()  # the uplink lost its window: everything unconfirmed again
    assert db.lease(10).seqs == (1, 2, 3, 4, 5)


def test_confirmed_rows_are_deleted_and_counted_once(db):
    db.append(entries(5), {}, 1, 1)
    assert db.confirm((1, 2, 3)) == 3
    assert db.confirm((1, 2, 3)) == 0  # a duplicate confirmation deletes nothing more
    assert db.depth == 2
    db.rewind()
    assert db.lease(10).seqs == (4, 5)


def test_a_batch_after_a_hole_is_refused_until_the_next_connection(db):
    assert db.check_order(10, 1) is None
    db.append(entries(1), {}, 10, 1)
    assert db.check_order(10, 2) is None
    assert "does not follow" in db.check_order(10, 3)
    db.refuse(10)
    assert "refused" in db.check_order(10, 2)  # once refused, the whole connection is
    assert db.check_order(11, 1) is None  # the reconnect starts clean
    assert "not 1" in db.check_order(12, 5)


def test_reject_refuses_what_does_not_fit(tmp_path):
    db = BufferDB(str(tmp_path / "b.db"), quota_bytes=2000, policy="reject")
    assert db.append(entries(10), {}, 1, 1)
    assert not db.append(entries(10), {}, 1, 2)
    assert db.depth == 10
    db.close()


def test_drop_oldest_deletes_the_oldest_telemetry_and_stores_a_gap(tmp_path):
    db = BufferDB(str(tmp_path / "b.db"), quota_bytes=3000, policy="drop-oldest")
    db.append(entries(1, PRIORITY_HIGH), {}, 1, 1)  # seq 1: an event, never dropped
    db.append(entries(10), {}, 1, 2)  # seqs 2..11
    assert db.append(entries(10), {}, 1, 3)
    assert db.dropped_total > 0
    rows = db.conn.execute("SELECT seq, priority, body FROM records ORDER BY seq").fetchall()
    assert rows[0][:2] == (1, PRIORITY_HIGH)
    gaps = [r for r in rows if msgpack.unpackb(r[2])[0] == uplink.KIND_GAP]
    assert len(gaps) == 1
    frame = uplink.encode_packed("gw", 1, [gaps[0][0]], [gaps[0][2]])
    (gap,) = uplink.decode(frame).records
    assert isinstance(gap, Gap) and gap.count == db.dropped_total and gap.first_seq == 2
    remaining_telemetry = [r[0] for r in rows if r[1] == PRIORITY_TELEMETRY]
    assert remaining_telemetry[0] == gap.last_seq + 1
    assert db.stats()["dropped_total"] == db.dropped_total
    db.close()


def test_drop_oldest_and_ttl_never_drop_rows_leased_to_the_uplink(tmp_path):
    """Leased rows are in flight (a batch paho queued while the central broker was away
    still arrives): a gap record must not name them."""
    now = [1000.0]
    db = BufferDB(str(tmp_path / "b.db"), quota_bytes=3000, policy="drop-oldest", clock=lambda: now[0])
    db.append(entries(10), {}, 1, 1)  # seqs 1..10
    leased = db.lease(4)
    assert leased is not None and leased.seqs == (1, 2, 3, 4)
    assert db.append(entries(10), {}, 1, 2)
    assert db.dropped_total > 0
    left = [r[0] for r in db.conn.execute("SELECT seq FROM records ORDER BY seq")]
    assert left[:4] == [1, 2, 3, 4]  # the window stays
    (seq, body), = [r for r in db.conn.execute("SELECT seq, body FROM records")
                    if msgpack.unpackb(r[1])[0] == uplink.KIND_GAP]
    (gap,) = uplink.decode(uplink.encode_packed("gw", 1, [seq], [body])).records
    assert gap.first_seq == 5 and gap.count == db.dropped_total == gap.last_seq - 4
    unleased = db.conn.execute("SELECT count(*) FROM records WHERE priority = ? AND seq > 4",
                               (PRIORITY_TELEMETRY,)).fetchone()[0]
    assert unleased > 0
    now[0] = 2000.0
    assert db.expire(60) == unleased  # everything is old; only what is not leased goes
    telemetry = [r[0] for r in db.conn.execute(
        "SELECT seq FROM records WHERE priority = ? ORDER BY seq", (PRIORITY_TELEMETRY,))]
    assert telemetry == [1, 2, 3, 4]
    db.close()


def test_a_corrupt_database_is_moved_aside_and_reported_never_deleted(tmp_path):
    path = tmp_path / "buffer.db"
    db = BufferDB(str(path))
    db.append(entries(200), {}, 1, 1)
    db.close()
    raw = bytearray(path.read_bytes())
    raw[4096:8192] = b"\xff" * 4096  # smash a page
    path.write_bytes(bytes(raw))
    fresh = BufferDB(str(path))
    assert fresh.moved_aside is not None and fresh.moved_aside.exists()
    assert fresh.moved_aside.read_bytes()[:16] == bytes(raw[:16])  # the evidence is kept
    assert fresh.depth == 0
    fresh.close()


def test_ttl_drops_old_telemetry_with_a_gap_and_keeps_events(tmp_path):
    now = [1000.0]
    db = BufferDB(str(tmp_path / "b.db"), clock=lambda: now[0])
    db.append(entries(3), {}, 1, 1)  # seqs 1..3 at t=1000
    db.append(entries(1, PRIORITY_HIGH), {}, 1, 2)  # seq 4, an event
    now[0] = 1100.0
    db.append(entries(2), {}, 1, 3)  # seqs 5, 6 at t=1100
    assert db.expire(0) == 0  # off
    now[0] = 1150.0
    assert db.expire(120) == 3
    left = [r[0] for r in db.conn.execute("SELECT seq FROM records ORDER BY seq")]
    assert left == [4, 5, 6, 7]  # 7 is the gap record
    (gap,) = uplink.decode(uplink.encode_packed("gw", 1, [7], [db.conn.execute(
        "SELECT body FROM records WHERE seq = 7").fetchone()[0]])).records
    assert (gap.first_seq, gap.last_seq, gap.count, gap.reason) == (1, 3, 3, "ttl")
    assert db.dropped_total == 3 and db.depth == 4
    db.close()


def test_a_step_of_the_system_clock_neither_expires_the_backlog_nor_makes_it_younger(tmp_path):
    clocks = Clocks()
    path = str(tmp_path / "b.db")
    db = BufferDB(path, clock=clocks.steady())
    db.append(entries(3), {}, 1, 1)  # seqs 1..3
    clocks.step(86_400)  # the system clock set a day forward: the rows are still seconds old
    assert db.expire(3_600) == 0 and db.stats()["oldest_age_s"] == 0
    clocks.advance(1_800)
    db.append(entries(2), {}, 1, 2)  # seqs 4, 5, half an hour later
    db.close()
    clocks.step(-86_400 - 3_600)  # and an hour behind where it began, while the gateway is stopped
    again = BufferDB(path, clock=clocks.steady())
    assert again.stats()["oldest_age_s"] == 1_800  # not younger: the new clock caught up
    clocks.advance(1_801)
    assert again.expire(3_600) == 3  # the first rows are an hour old now, by the time that passed
    telemetry = [r[0] for r in again.conn.execute(
        "SELECT seq FROM records WHERE priority = ? ORDER BY seq", (PRIORITY_TELEMETRY,))]
    assert telemetry == [4, 5]
    (gap,) = uplink.decode(uplink.encode_packed("gw", 1, [6], [again.conn.execute(
        "SELECT body FROM records WHERE seq = 6").fetchone()[0]])).records
    assert gap.time.timestamp() == clocks.system  # a gap record is data: the system clock's time
    again.close()


def test_a_batch_larger_than_the_whole_quota_is_stored_when_the_buffer_is_empty_never_blocking(tmp_path):
    db = BufferDB(str(tmp_path / "b.db"), quota_bytes=500, policy="reject")
    assert db.append(entries(1), {}, 1, 1)  # fits
    assert not db.append(entries(20), {}, 1, 2)  # can never fit while anything waits: refused ...
    db.confirm((1,))
    assert db.append(entries(20), {}, 2, 1)  # ... and stored once the buffer is empty
    assert db.depth == 20 and db.bytes > db.quota_bytes
    db.close()


def test_a_lease_is_bounded_by_bytes_and_holds_at_least_one_row(tmp_path):
    db = BufferDB(str(tmp_path / "b.db"))
    db.append([(PRIORITY_TELEMETRY, b"x" * 100)] * 10 + [(PRIORITY_TELEMETRY, b"y" * 5000)], {}, 1, 1)
    assert db.lease(500, max_bytes=350).seqs == (1, 2, 3)
    assert db.lease(500, max_bytes=350).seqs == (4, 5, 6)
    assert db.lease(500, max_bytes=10_000).seqs == (7, 8, 9, 10, 11)
    db.rewind()
    db.lease(500, max_bytes=1000)
    assert db.lease(500, max_bytes=10).seqs == (11,)  # larger than the bound: alone
    db.close()


def test_rows_that_can_never_travel_move_to_the_dead_letters_with_their_reason(tmp_path):
    db = BufferDB(str(tmp_path / "b.db"))
    db.append(entries(3), {}, 1, 1)
    assert db.dead_letter((2,), "unframable: too large") == 1
    assert db.depth == 2
    assert [r[0] for r in db.conn.execute("SELECT seq FROM records ORDER BY seq")] == [1, 3]
    assert db.conn.execute("SELECT seq, reason FROM dead_letters").fetchall() == [(2, "unframable: too large")]
    db.close()


def test_local_records_are_answered_to_their_sender_after_the_commit_or_refused_when_full(tmp_path):
    from fakes import context

    from edge.actors.buffer import AppendLocal, Buffer, LocalAppended

    ctx, peers = context("buffer", "source", "uplink", "commands")
    actor = Buffer(ctx, str(tmp_path / "b.db"), "power-safe", 4096, "reject")
    actor.on_start()
    try:
        actor.handle(AppendLocal(tuple(entries(1, PRIORITY_HIGH)), "commands", ("expired", "c-1", "pm-1")))
        assert peers["commands"].told == [LocalAppended(("expired", "c-1", "pm-1"), True)]
        assert actor.db.depth == 1
        actor.handle(AppendLocal(tuple(entries(60)), "commands", "too-much"))  # over the 4 KiB quota
        assert peers["commands"].told[-1] == LocalAppended("too-much", False) and actor.db.depth == 1
    finally:
        actor.close()


def test_a_full_disk_refuses_a_batch_whole_and_changes_nothing(tmp_path):
    path = str(tmp_path / "b.db")
    db = BufferDB(path)
    try:
        assert db.append(entries(2), {}, 1, 1, fingerprints=(1, 2))
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as a full filesystem
        before = (db.next_seq, db.depth, db.bytes, db.last_batch, db.recent())
        with pytest.raises(buffer_db.DiskFull, match="full"):
            db.append(entries(200, size=1000), {"pm-1": (3, None)}, 1, 2, fingerprints=(3,))
        assert (db.next_seq, db.depth, db.bytes, db.last_batch, db.recent()) == before
        assert db.seq_state() == {} and not db.conn.in_transaction
        db.conn.execute("PRAGMA max_page_count = 1000000")  # room again
        assert db.append(entries(200, size=1000), {}, 1, 2, fingerprints=(3,))
        assert db.lease(500).seqs == tuple(range(1, 203)) and db.recent() == (1, 2, 3)
    finally:
        db.close()


def test_opening_writes_nothing_and_the_new_epoch_is_saved_with_the_first_rows(tmp_path):
    """So a gateway restarted on a full disk starts (and sends its backlog) instead of
    failing to open its buffer until someone frees space."""
    path = tmp_path / "b.db"
    first = BufferDB(str(path))
    first.append(entries(2), {}, 1, 1)
    first.close()
    before = path.read_bytes()
    opened = BufferDB(str(path))
    opened.conn.execute("PRAGMA max_page_count = 1")  # the file may not grow: a full disk, as SQLite sees it
    assert opened.boot_epoch == 2 and opened.lease(10).seqs == (1, 2)  # reads work
    opened.close()
    assert path.read_bytes() == before
    again = BufferDB(str(path))
    assert again.boot_epoch == 2  # nothing carried epoch 2: it is not used up
    with pytest.raises(buffer_db.DiskFull):
        again.conn.execute("PRAGMA max_page_count = 1")
        again.append(entries(50), {}, 1, 1)
    again.conn.execute("PRAGMA max_page_count = 1073741823")
    assert again.append(entries(1), {}, 1, 1)
    again.close()
    last = BufferDB(str(path))
    assert last.boot_epoch == 3  # saved with the row that carries it
    assert [r[0] for r in last.conn.execute("SELECT boot_epoch FROM records ORDER BY seq")] == [1, 1, 2]
    last.close()
