"""Batched SQLite inserts with few GIL hand-offs.

Python's ``sqlite3`` releases the GIL around every ``sqlite3_step``, and ``executemany``
steps once per row: each row then waits to get the GIL back. Alone that costs nothing
(the buffer commits 1,000 rows in 2 ms), but next to a busy thread (paho parsing a
backlog) every wait lasts up to the interpreter's switch interval: 1,000 rows took 640 ms
here. A multi-row ``VALUES`` statement inserts up to ``chunk`` rows in one step.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

# Rows per statement, at most: within the connection's limit on parameters (999 before
# SQLite 3.32, 32,766 after; Debian's build allows 250,000).
CHUNK = 1000


@lru_cache(maxsize=64)
def _statement(head: str, width: int, rows: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES " + ", ".join([one] * rows)


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]],
                chunk: int = CHUNK) -> None:
    """``head`` is ``INSERT [OR ...] INTO table (columns)``; every row has one value per
    column. Runs inside the caller's transaction."""
    if not rows:
        return
    width = len(rows[0])
    chunk = max(1, min(chunk, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        conn.execute(_statement(head, width, len(part)), [v for row in part for v in row])
