"""Multi-row inserts: every row arrives once, in order, within the parameter limit."""

from __future__ import annotations

import sqlite3

import pytest

from edge.io.sqlite import insert_rows


@pytest.mark.parametrize("limit", [250_000, 10, 3])
def test_rows_go_in_by_chunks_within_the_connections_parameter_limit(limit):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c BLOB)")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)  # 10: 3 rows a statement
    rows = [(i, f"r{i}", bytes([i % 256])) for i in range(2_345)]
    insert_rows(conn, "INSERT INTO t (a, b, c)", rows)
    insert_rows(conn, "INSERT INTO t (a, b, c)", [])
    assert conn.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == rows


def test_or_ignore_applies_to_every_row_of_a_statement():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    insert_rows(conn, "INSERT OR IGNORE INTO t (k, v)", [("a", 1), ("b", 2)])
    insert_rows(conn, "INSERT OR IGNORE INTO t (k, v)", [("b", 3), ("c", 4), ("c", 5)])
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [("a", 1), ("b", 2), ("c", 4)]


def test_any_number_of_rows_uses_at_most_five_statement_shapes():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY)")
    shapes: set[str] = set()
    conn.set_trace_callback(lambda sql: shapes.add(sql) if sql.startswith("INSERT") else None)
    start = 0
    for n in range(1, 700):
        insert_rows(conn, "INSERT INTO t (a)", [(i,) for i in range(start, start + n)])
        start += n
    assert conn.execute("SELECT count(*), max(a) FROM t").fetchone() == (start, start - 1)
    assert len({s.count("(") for s in shapes}) <= 5
