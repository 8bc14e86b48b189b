"""SQLite as every store of the project opens and writes it: ``open_wal`` (the one way a
database is opened), ``immediate`` (one write transaction) and ``insert_rows`` (batched
inserts with few GIL hand-offs).

Batched inserts: Python's ``sqlite3`` releases the GIL around every ``sqlite3_step``, and ``executemany``
steps once per row: each row then waits to get the GIL back. Alone that costs nothing
(the buffer commits 1,000 rows in 2 ms), but next to a busy thread (paho parsing a
backlog) every wait lasts up to the interpreter's switch interval: 1,000 rows took 640 ms
here. A multi-row ``VALUES`` statement inserts many rows in one step.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any


def open_wal(path: str, durability: str = "power-safe", *, shared: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions through ``immediate``), journal WAL.
    ``power-safe`` syncs every commit (``synchronous=FULL``: a commit survives a power
    cut); ``crash-safe`` syncs at checkpoints (``NORMAL``: it survives a crash of the
    process, not of the machine). ``shared``: usable from threads other than the opener's
    (the caller serialises the use)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=not shared, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power-safe' else 'NORMAL'}")
    return conn


# Rows per statement: the biggest of these that fits what is left, so a table has at most
# five statement shapes. sqlite3 caches every prepared statement it sees (128 of them): one
# shape per batch size cost 25 MB of RSS in the gateway.
SIZES = (256, 64, 16, 4, 1)


@lru_cache(maxsize=64)
def _statement(head: str, width: int, rows: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES " + ", ".join([one] * rows)


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head`` is ``INSERT [OR ...] INTO table (columns)``; every row has one value per
    column. Runs inside the caller's transaction."""
    if not rows:
        return
    width = len(rows[0])
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width  # 999 before SQLite 3.32
    start = 0
    while start < len(rows):
        size = next(n for n in SIZES if n <= len(rows) - start and (n <= limit or n == 1))
        part = rows[start:start + size]
        conn.execute(_statement(head, width, size), [v for row in part for v in row])
        start += size


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``: the write lock from the start, so it
    never fails half-way for another writer), committed at the end of the block, rolled
    back on any exception. ``conn`` is in autocommit mode (``isolation_level=None``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
            conn.execute("ROLLBACK")
        raise


def disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL: the filesystem (or the database's size limit) has no room."""
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
