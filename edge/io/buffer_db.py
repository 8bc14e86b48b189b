"""The buffer's SQLite storage: ``BufferDB``, owned by one thread (the Buffer actor, or the
``edge buffer`` command). The Buffer actor (actors/buffer.py) describes the ack chain, the
quota policies and leasing that these methods implement.

Tables: ``records`` (seq, boot_epoch, priority, body, size, stored_at), ``dead_letters``
(the same plus reason and dead_at), ``seq_state`` (the v2 sequence tracker: last seq and
its ts per device), ``recent`` (the fingerprints of the last messages taken, one row per
batch, for the decoder's redelivery check) and ``meta`` (boot epoch, next seq, drop
counter, the last committed source batch).

A corrupt database is found at start by ``PRAGMA integrity_check``, moved aside with a
timestamped name, reported, and replaced by a new one: never silently deleted.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import sqlite_utils
from prometheus_client import Counter, Gauge

from edge.codecs.batch import PRIORITY_HIGH, PRIORITY_TELEMETRY
from edge.codecs.records import Gap
from edge.codecs.uplink import from_wire, to_wire
from edge.errors import InputError
from edge.io.sqlite import disk_full, immediate, insert_rows, open_wal
from edge.runtime import log
from edge.runtime.clock import Steady

_log = log.get(__name__)

SCHEMA_VERSION = 1
ROW_OVERHEAD = 48  # bytes per row besides the body, for the quota's estimate
RESERVE_BYTES = 8 * 1024 * 1024  # [buffer] reserve_bytes: room kept back for deletes on a full disk
# Message fingerprints kept for redeliveries (edge.codecs.batch.Recent): twice the largest
# receive maximum MQTT allows, 1 MiB on disk; the decoder keeps what it needs of them.
RECENT_KEPT = 2 * 65_535

STORED = Counter("edge_buffer_records_stored", "Records committed to the buffer", ["priority"])
CONFIRMED = Counter("edge_buffer_records_confirmed", "Records confirmed by the server and deleted")
DROPPED = Counter("edge_buffer_records_dropped", "Telemetry records dropped by the drop-oldest policy")
REJECTED = Counter("edge_buffer_batches_rejected",
                   "Batches left unacked because the quota was reached or the disk was full")
COMMITS = Counter("edge_buffer_commits", "Transactions committed")
DEPTH = Gauge("edge_buffer_depth_records", "Records waiting for confirmation")
BYTES = Gauge("edge_buffer_bytes", "Estimated bytes of waiting records")
RESERVE = Gauge("edge_buffer_reserve_held", "1 while the buffer holds its reserve file (room for deletes)")
OLDEST = Gauge("edge_buffer_oldest_record_timestamp_seconds",
               "When the oldest waiting record was stored (Unix time; 0 when empty)")
CORRUPT = Counter("edge_buffer_corrupt_databases", "Corrupt databases found at start and moved aside")
DEAD = Counter("edge_buffer_records_dead_lettered", "Records moved to the buffer's dead letters", ["reason"])


class Entry(NamedTuple):
    """One record to store. A tuple, so the decoder hands on the (priority, body) pairs of
    ``edge.codecs.batch.Outcome`` as they are (no object built per record)."""

    priority: int
    body: bytes  # the record's wire form (edge.codecs.uplink.to_wire), msgpack-packed



@dataclass(frozen=True, slots=True)
class Leased:
    boot_epoch: int
    seqs: tuple[int, ...]
    bodies: tuple[bytes, ...]



def check_integrity(path: Path) -> Path | None:
    """Run integrity_check; a corrupt file (and its WAL) is moved aside. Returns where."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(path)
        result = conn.execute("PRAGMA integrity_check").fetchall()
        conn.close()
        ok = result == [("ok",)]
        detail = "; ".join(r[0] for r in result[:5])
    except sqlite3.DatabaseError as exc:
        ok, detail = False, str(exc)
    if ok:
        return None
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    CORRUPT.inc()
    _log.error("buffer_corrupt_moved_aside", path=str(path), moved_to=str(aside), detail=detail)
    return aside


class DiskFull(Exception):
    """The buffer's filesystem has no room for a batch: nothing of it was committed."""


class BufferDB:
    """The buffer's storage logic. One owner thread (the Buffer actor, or a CLI)."""

    def __init__(self, path: str, durability: str = "power-safe", quota_bytes: int = 1024**3,
                 policy: str = "reject", clock: Callable[[], float] | None = None,
                 reserve_bytes: int = RESERVE_BYTES) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reserve = self.path.with_name(self.path.name + ".reserve")
        self.reserve_bytes = reserve_bytes
        self.moved_aside = check_integrity(self.path)
        self.conn = open_wal(str(self.path), durability, shared=True)
        self.quota_bytes = quota_bytes
        self.policy = policy
        self._migrate()
        # Rows are stamped and aged on a steady clock (edge.runtime.clock): a step of the
        # system clock neither expires the backlog nor makes it younger. Gap records carry
        # the system clock's time, as data.
        clock = clock if clock is not None else Steady()
        if isinstance(clock, Steady):
            last = self.conn.execute("SELECT stored_at FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            clock.catch_up(last[0] if last else 0.0)
        self.clock = clock
        self.wall: Callable[[], float] = getattr(clock, "wall", clock)
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        self.boot_epoch = int(meta.get("boot_epoch", 0)) + 1
        top = self.conn.execute("SELECT max(seq) FROM records").fetchone()[0]
        self.next_seq = max(int(meta.get("next_seq", 1)), (top or 0) + 1)
        self.dropped_total = int(meta.get("dropped_total", 0))
        self.last_generation = int(meta.get("source_generation", 0))
        self.last_batch = int(meta.get("source_batch", 0))
        self.refused_generations: set[int] = set()
        # The new epoch is saved with the first rows that carry it (``_set_meta``), not here:
        # opening writes nothing, so a gateway restarted on a full disk starts, says so, and
        # sends its backlog, instead of failing to start until someone frees space.
        self._epoch_saved = self._epoch_saving = False
        depth, size = self.conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        self.depth, self.bytes = depth, size
        self.cursor = {PRIORITY_HIGH: 0, PRIORITY_TELEMETRY: 0}
        self._recent_rows: deque[tuple[int, int]] = deque(self.conn.execute(
            "SELECT id, length(fingerprints) / 8 FROM recent ORDER BY id"))
        self._recent_total = sum(n for _, n in self._recent_rows)
        self._publish()
        self.hold_reserve()

    # -- the reserve
    def hold_reserve(self) -> bool:
        """Keep ``reserve_bytes`` of the filesystem in a file of the buffer's own, taken
        only while at least twice that is free: when the buffer itself has filled the disk,
        giving it back is what lets confirmed rows be deleted (a delete writes to the log
        too) and ingest resume. True when the reserve is held."""
        if self.reserve_bytes <= 0:
            return True
        if self.reserve.exists():
            RESERVE.set(1)
            return True
        if shutil.disk_usage(self.reserve.parent).free < 2 * self.reserve_bytes:
            return False
        fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.reserve_bytes)
        except OSError as exc:
            self.reserve.unlink(missing_ok=True)
            _log.warning("buffer_reserve_not_taken", path=str(self.reserve), error=str(exc))
            return False
        finally:
            os.close(fd)
        RESERVE.set(1)
        _log.info("buffer_reserve_taken", path=str(self.reserve), bytes=self.reserve_bytes)
        return True

    def release_reserve(self) -> bool:
        """Give the reserve back to the filesystem; False when there was none."""
        if not self.reserve.exists():
            return False
        self.reserve.unlink()
        RESERVE.set(0)
        _log.warning("buffer_reserve_released", path=str(self.reserve), bytes=self.reserve_bytes,
                     detail="the disk is full: its room lets confirmed rows be deleted; taken "
                            "again once twice as much is free")
        return True

    def _migrate(self) -> None:
        db = sqlite_utils.Database(self.conn)
        db["meta"].create({"key": str, "value": int}, pk="key", if_not_exists=True)
        version = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None:
            db["records"].create({"seq": int, "boot_epoch": int, "priority": int, "body": bytes,
                                  "size": int, "stored_at": float}, pk="seq", if_not_exists=True)
            db["records"].create_index(["priority", "seq"], if_not_exists=True)
            db["seq_state"].create({"device_id": str, "last_seq": int, "boot_ts": str},
                                   pk="device_id", if_not_exists=True)
            insert_rows(self.conn, "INSERT OR REPLACE INTO meta (key, value)", [("schema_version", SCHEMA_VERSION)])
        if "last_ts" not in db["seq_state"].columns_dict:  # buffers made before it: NULL, as before
            db["seq_state"].add_column("last_ts", str)
        db["recent"].create({"id": int, "fingerprints": bytes}, pk="id", if_not_exists=True)
        db["dead_letters"].create({"seq": int, "boot_epoch": int, "priority": int, "body": bytes,
                                   "stored_at": float, "reason": str, "dead_at": float},
                                  pk="seq", if_not_exists=True)

    def _set_meta(self, **values: int) -> None:
        if not self._epoch_saved:
            values["boot_epoch"] = self.boot_epoch
            self._epoch_saving = True  # saved once the transaction commits (``_transaction``)
        insert_rows(self.conn, "INSERT OR REPLACE INTO meta (key, value)", list(values.items()))

    def _publish(self, oldest_moved: bool = True) -> None:
        DEPTH.set(self.depth)
        BYTES.set(self.bytes)
        if oldest_moved:
            OLDEST.set(self.oldest_stored_at() or 0)

    def oldest_stored_at(self) -> float | None:
        """By sequence (the primary key), not min(stored_at): that would scan the table."""
        row = self.conn.execute("SELECT stored_at FROM records ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    # -- writing
    def check_order(self, generation: int, batch: int) -> str | None:
        """None when (generation, batch) follows what was committed; else why not."""
        if generation in self.refused_generations:
            return "an earlier batch of this connection was refused"
        if generation == self.last_generation and batch != self.last_batch + 1:
            return f"batch {batch} does not follow committed batch {self.last_batch}"
        if generation != self.last_generation and batch != 1:
            return f"first batch seen of a connection is {batch}, not 1"
        return None

    def refuse(self, generation: int) -> None:
        self.refused_generations.add(generation)

    def append(self, entries: Sequence[tuple[int, bytes]], seq_state: dict[str, tuple[int, str | None]],
               generation: int | None = None, batch: int | None = None,
               fingerprints: Sequence[int] = ()) -> bool:
        """Commit a batch with its identities, the sequence state and the fingerprints of
        its messages. False: the quota (reject policy) refused it. ``DiskFull``: the
        filesystem refused it (nothing committed, nothing changed)."""
        incoming = sum(len(body) for _, body in entries) + ROW_OVERHEAD * len(entries)
        dropped: tuple[int, int, int, int] | None = None
        if self.bytes + incoming > self.quota_bytes:
            if self.policy == "reject":
                if self.depth or incoming <= self.quota_bytes:
                    REJECTED.inc()
                    return False
                # Larger than the whole quota, and nothing to wait for: store it, or it
                # would block ingest for good.
                _log.warning("buffer_batch_exceeds_quota", bytes=incoming, quota_bytes=self.quota_bytes)
            else:
                dropped = self._drop_oldest(self.bytes + incoming - self.quota_bytes)
        now = self.clock()
        rows = []
        seq = self.next_seq
        if dropped is not None:
            gap = msgpack.packb(gap_record(self.wall(), dropped[0], dropped[1], dropped[2]), use_bin_type=True)
            rows.append((seq, self.boot_epoch, PRIORITY_HIGH, gap, len(gap) + ROW_OVERHEAD, now))
            seq += 1
        epoch = self.boot_epoch
        for priority, body in entries:
            rows.append((seq, epoch, priority, body, len(body) + ROW_OVERHEAD, now))
            seq += 1
        remembered = None
        try:
            with self._transaction():
                remembered = self._write(rows, dropped, seq_state, fingerprints, generation, batch, seq)
        except DiskFull:
            REJECTED.inc()
            raise
        if remembered is not None:
            self._remembered(*remembered)
        COMMITS.inc()
        self.next_seq = seq
        if generation is not None and batch is not None:
            self.last_generation, self.last_batch = generation, batch
        if dropped is not None:
            _, _, count, freed = dropped
            self.dropped_total += count
            DROPPED.inc(count)
            self.depth -= count
            self.bytes -= freed
            _log.warning("buffer_dropped_oldest", records=count, first_seq=dropped[0],
                         last_seq=dropped[1], dropped_total=self.dropped_total)
        self.depth += len(rows)
        self.bytes += sum(r[4] for r in rows)
        STORED.labels(str(PRIORITY_TELEMETRY)).inc(sum(1 for r in rows if r[2] == PRIORITY_TELEMETRY))
        STORED.labels(str(PRIORITY_HIGH)).inc(sum(1 for r in rows if r[2] == PRIORITY_HIGH))
        # Appending moves the oldest row only into an empty buffer (or past dropped rows).
        self._publish(oldest_moved=self.depth == len(rows) or dropped is not None)
        return True

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``immediate``, with a full filesystem as ``DiskFull`` (nothing committed)."""
        try:
            with immediate(self.conn):
                yield self.conn
        except sqlite3.OperationalError as exc:
            self._epoch_saving = False
            if disk_full(exc):
                raise DiskFull(f"{exc} ({self.path})") from exc
            raise
        except BaseException:
            self._epoch_saving = False
            raise
        self._epoch_saved = self._epoch_saved or self._epoch_saving

    def _write(self, rows: list[tuple], dropped: tuple[int, int, int, int] | None,
               seq_state: dict[str, tuple[int, str | None]], fingerprints: Sequence[int],
               generation: int | None, batch: int | None, next_seq: int) -> tuple[int, int] | None:
        """The statements of one ``append``, in the caller's transaction; the fingerprint
        row written (id, count), for ``_remembered`` once committed."""
        conn = self.conn
        if dropped is not None:
            first, last, count, _ = dropped
            conn.execute("DELETE FROM records WHERE priority = ? AND seq BETWEEN ? AND ?",
                         (PRIORITY_TELEMETRY, first, last))
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped_total', ?)",
                         (self.dropped_total + count,))
        insert_rows(conn, "INSERT INTO records (seq, boot_epoch, priority, body, size, stored_at)", rows)
        if seq_state:
            insert_rows(conn, "INSERT OR REPLACE INTO seq_state (device_id, last_seq, last_ts)",
                        [(d, s, t) for d, (s, t) in seq_state.items()])
        remembered = None
        if fingerprints:
            row = conn.execute("INSERT INTO recent (fingerprints) VALUES (?)",
                               (array("Q", fingerprints).tobytes(),)).lastrowid
            remembered = (row, len(fingerprints))
            upto = self._recent_upto(len(fingerprints))
            if upto is not None:
                conn.execute("DELETE FROM recent WHERE id <= ?", (upto,))
        if generation is not None and batch is not None:
            self._set_meta(source_generation=generation, source_batch=batch, next_seq=next_seq)
        else:
            self._set_meta(next_seq=next_seq)
        return remembered

    def _drop_oldest(self, need: int) -> tuple[int, int, int, int] | None:
        """(first seq, last seq, count, bytes) of the oldest telemetry rows not leased to
        the uplink that free ``need`` bytes; the caller deletes them in its transaction.

        Leased rows are in flight: a batch sent while the central broker was away still
        reaches it when it is back (paho queues it). Dropping them would put records in a
        gap record that the server then receives; so while the uplink's window holds the
        oldest rows, the quota can be exceeded by at most that window."""
        freed, first, last, count = 0, None, None, 0
        for seq, size in self.conn.execute(
                "SELECT seq, size FROM records WHERE priority = ? AND seq > ? ORDER BY seq",
                (PRIORITY_TELEMETRY, self.cursor[PRIORITY_TELEMETRY])):
            first = seq if first is None else first
            last, count, freed = seq, count + 1, freed + size
            if freed >= need:
                break
        if first is None or last is None:
            return None
        # Rows of other classes between first and last stay: the DELETE names the class.
        return first, last, count, freed

    def expire(self, ttl_s: float) -> int:
        """Delete telemetry stored more than ``ttl_s`` ago and not leased to the uplink
        (by the steady clock, which a step of the system clock does not move); count it as
        dropped and store a gap record for it."""
        if ttl_s <= 0:
            return 0
        now = self.clock()
        cutoff = now - ttl_s
        first, last, count, size = self.conn.execute(
            "SELECT min(seq), max(seq), count(*), coalesce(sum(size), 0) FROM records "
            "WHERE priority = ? AND stored_at < ? AND seq > ?",
            (PRIORITY_TELEMETRY, cutoff, self.cursor[PRIORITY_TELEMETRY])).fetchone()
        if not count:
            return 0
        gap = msgpack.packb(gap_record(self.wall(), first, last, count, "ttl"), use_bin_type=True)
        seq = self.next_seq
        conn = self.conn
        with self._transaction():
            conn.execute("DELETE FROM records WHERE priority = ? AND stored_at < ? AND seq > ?",
                         (PRIORITY_TELEMETRY, cutoff, self.cursor[PRIORITY_TELEMETRY]))
            conn.execute("INSERT INTO records (seq, boot_epoch, priority, body, size, stored_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (seq, self.boot_epoch, PRIORITY_HIGH, gap, len(gap) + ROW_OVERHEAD, now))
            self._set_meta(next_seq=seq + 1, dropped_total=self.dropped_total + count)
        self.next_seq = seq + 1
        self.dropped_total += count
        self.depth += 1 - count
        self.bytes += len(gap) + ROW_OVERHEAD - size
        DROPPED.inc(count)
        self._publish()
        _log.warning("buffer_expired", records=count, ttl_s=ttl_s, first_seq=first, last_seq=last)
        return count

    # -- leasing
    def lease(self, max_records: int, max_bytes: int = 1 << 62) -> Leased | None:
        """The oldest unleased rows, class 0 first; all of one boot epoch; at most
        ``max_bytes`` of bodies (at least one row, whatever its size)."""
        rows: list[tuple[int, int, bytes, int]] = []
        size = 0
        for priority in (PRIORITY_HIGH, PRIORITY_TELEMETRY):
            need = max_records - len(rows)
            if need <= 0 or size >= max_bytes:
                break
            for seq, boot, body in self.conn.execute(
                    "SELECT seq, boot_epoch, body FROM records WHERE priority = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?", (priority, self.cursor[priority], need)):
                if rows and size + len(body) > max_bytes:
                    break
                rows.append((seq, boot, body, priority))
                size += len(body)
        if not rows:
            return None
        boot = min(rows)[1]
        rows = sorted(r for r in rows if r[1] == boot)
        for seq, _, _, priority in rows:
            self.cursor[priority] = max(self.cursor[priority], seq)
        return Leased(boot, tuple(r[0] for r in rows), tuple(r[2] for r in rows))

    def dead_letter(self, seqs: tuple[int, ...], reason: str) -> int:
        """Move rows that can never travel to ``dead_letters`` (kept, with the reason)."""
        now = self.clock()
        conn = self.conn
        with self._transaction():
            moved: list[int] = []
            for chunk in range(0, len(seqs), 500):
                part = seqs[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                conn.execute(f"INSERT OR REPLACE INTO dead_letters (seq, boot_epoch, priority, body, "
                             f"stored_at, reason, dead_at) SELECT seq, boot_epoch, priority, body, "
                             f"stored_at, ?, ? FROM records WHERE seq IN ({marks})", (reason, now, *part))
                moved += [r[0] for r in conn.execute(
                    f"DELETE FROM records WHERE seq IN ({marks}) RETURNING size", part)]
        self.depth -= len(moved)
        self.bytes -= sum(moved)
        DEAD.labels(reason).inc(len(moved))
        self._publish()
        _log.error("buffer_dead_lettered", records=len(moved), reason=reason,
                   detail="kept in the buffer's dead_letters table (edge buffer dead)")
        return len(moved)

    def rewind(self) -> None:
        self.cursor = {PRIORITY_HIGH: 0, PRIORITY_TELEMETRY: 0}

    def confirm(self, seqs: tuple[int, ...]) -> int:
        conn = self.conn
        with self._transaction():
            sizes: list[int] = []
            for chunk in range(0, len(seqs), 500):
                part = seqs[chunk:chunk + 500]
                sizes += [r[0] for r in conn.execute(
                    f"DELETE FROM records WHERE seq IN ({','.join('?' * len(part))}) RETURNING size",
                    part)]
        self.depth -= len(sizes)
        self.bytes -= sum(sizes)
        CONFIRMED.inc(len(sizes))
        self._publish()
        return len(sizes)

    # -- reading
    def seq_state(self) -> dict[str, tuple[int, str | None]]:
        return {d: (s, t) for d, s, t in self.conn.execute(
            "SELECT device_id, last_seq, last_ts FROM seq_state")}

    def recent(self) -> tuple[int, ...]:
        """The committed message fingerprints, oldest first (at most ``RECENT_KEPT`` and
        one batch)."""
        out = array("Q")
        for (blob,) in self.conn.execute("SELECT fingerprints FROM recent ORDER BY id"):
            out.frombytes(blob)
        return tuple(out)

    def _recent_upto(self, adding: int) -> int | None:
        """The last fingerprint row to delete so that the rest, with ``adding`` more, still
        hold ``RECENT_KEPT``; None: none to delete."""
        total, upto = self._recent_total + adding, None
        for row, n in self._recent_rows:
            if total - n < RECENT_KEPT:
                break
            total -= n
            upto = row
        return upto

    def _remembered(self, row: int, count: int) -> None:
        """After the commit: the in-memory account of the fingerprint rows."""
        kept = self._recent_rows
        upto = self._recent_upto(count)
        while kept and upto is not None and kept[0][0] <= upto:
            self._recent_total -= kept.popleft()[1]
        kept.append((row, count))
        self._recent_total += count

    def stats(self) -> dict[str, Any]:
        oldest = self.oldest_stored_at()
        return {"depth": self.depth, "bytes": self.bytes, "boot_epoch": self.boot_epoch,
                "next_seq": self.next_seq, "dropped_total": self.dropped_total,
                "oldest_age_s": round(self.clock() - oldest, 3) if oldest else 0.0,
                "quota_bytes": self.quota_bytes, "policy": self.policy}

    def close(self) -> None:
        self.conn.close()


def gap_record(now: float, first: int, last: int, count: int, reason: str = "quota") -> list[Any]:
    """The wire form of a gap record: telemetry sequences first..last, ``count`` dropped."""
    return to_wire(Gap(datetime.fromtimestamp(now, UTC), first, last, count, reason))


class BufferReader:
    """The buffer as ``edge buffer`` sees it, beside a running gateway: a read-only
    connection (WAL lets it read while the gateway writes), or read-write for ``purge``.
    ``InputError`` when the file cannot be opened as a buffer."""

    def __init__(self, path: str, writable: bool = False) -> None:
        self.path = path
        mode = "rw" if writable else "ro"
        try:
            self.conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=30)
            self.conn.execute("SELECT 1 FROM records LIMIT 1")
        except sqlite3.Error as exc:
            raise InputError(f"cannot open {path}: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        meta = dict(self.conn.execute("SELECT key, value FROM meta"))
        by_class = {str(p): {"records": n, "bytes": b} for p, n, b in self.conn.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM records GROUP BY priority")}
        row = self.conn.execute("SELECT stored_at FROM records ORDER BY seq LIMIT 1").fetchone()
        oldest = row[0] if row else None
        return {"path": self.path, "depth": sum(c["records"] for c in by_class.values()),
                "bytes": sum(c["bytes"] for c in by_class.values()), "by_priority": by_class,
                "oldest_age_s": round(time.time() - oldest, 3) if oldest else 0.0,
                "boot_epoch": meta.get("boot_epoch"), "next_seq": meta.get("next_seq"),
                "dropped_total": meta.get("dropped_total", 0),
                "dead_letters": sum(1 for _ in self.dead_letters())}

    def records(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Waiting records in the order they leave (priority class, then sequence)."""
        sql = "SELECT seq, boot_epoch, priority, body, stored_at FROM records ORDER BY priority, seq"
        cursor = self.conn.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        for seq, boot, priority, body, stored_at in cursor:
            yield {"seq": seq, "boot_epoch": boot, "priority": priority, "stored_at": stored_at,
                   "record": _readable(body)}

    def dead_letters(self) -> Iterator[dict[str, Any]]:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'dead_letters'").fetchone() is None:
            return
        for seq, boot, reason, dead_at, body in self.conn.execute(
                "SELECT seq, boot_epoch, reason, dead_at, body FROM dead_letters ORDER BY seq"):
            yield {"seq": seq, "boot_epoch": boot, "reason": reason, "dead_at": dead_at,
                   "record": _readable(body)}

    def purge(self) -> dict[str, Any]:
        """Delete every waiting record and give the space back to the file system (a full
        SD card), from the WAL too."""
        with self.conn:
            removed = self.conn.execute("DELETE FROM records").rowcount
        size = Path(self.path).stat().st_size
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"purged": removed, "path": self.path, "bytes_freed": size - Path(self.path).stat().st_size}

    def close(self) -> None:
        self.conn.close()


def _readable(body: bytes) -> dict[str, Any]:
    try:
        return from_wire(msgpack.unpackb(body, raw=False)).to_json()
    except Exception as exc:  # noqa: BLE001 - a row of another version is shown, not fatal
        return {"unreadable": repr(exc)[:200], "body_hex": body[:256].hex()}
