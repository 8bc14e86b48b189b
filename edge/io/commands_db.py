"""The gateway's command queue in SQLite: downlink commands survive a restart until they are
delivered, acknowledged or expired (the CommandRouter actor decides which). Its times
(deadline, received_at, delivered_at) are on the router's steady clock (edge.runtime.clock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from edge.io.sqlite import open_wal

STATES = ("pending", "delivered", "acked", "expired")


class CommandQueue:
    """One owner thread (the CommandRouter actor)."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = open_wal(path)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS commands (cmd_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, "
            "deadline REAL NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, "
            "state TEXT NOT NULL, received_at REAL NOT NULL, delivered_at REAL, result TEXT)")

    def add(self, cmd_id: str, device: str, deadline: float, topic: str, payload: bytes,
            now: float) -> None:
        """A command seen before (same ``cmd_id``) is not added again."""
        self.conn.execute("INSERT OR IGNORE INTO commands (cmd_id, device_id, deadline, topic, "
                          "payload, state, received_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                          (cmd_id, device, deadline, topic, payload, now))

    def pending(self) -> Iterator[tuple[str, str, float, str, bytes]]:
        """(cmd_id, device, deadline, topic, payload), oldest first."""
        yield from self.conn.execute(
            "SELECT cmd_id, device_id, deadline, topic, payload FROM commands "
            "WHERE state = 'pending' ORDER BY received_at").fetchall()

    def latest(self) -> float:
        """The latest time this queue stored (received or delivered at), 0.0 when empty."""
        row = self.conn.execute("SELECT max(coalesce(max(received_at), 0), coalesce(max(delivered_at), 0)) "
                                "FROM commands").fetchone()
        return float(row[0] or 0.0)

    def count_pending(self) -> int:
        return self.conn.execute("SELECT count(*) FROM commands WHERE state = 'pending'").fetchone()[0]

    def delivered(self, cmd_id: str, at: float) -> None:
        self.conn.execute("UPDATE commands SET state = 'delivered', delivered_at = ? WHERE cmd_id = ?",
                          (at, cmd_id))

    def acked(self, cmd_id: str, result: str) -> None:
        self.conn.execute("UPDATE commands SET state = 'acked', result = ? WHERE cmd_id = ?",
                          (result, cmd_id))

    def expired(self, cmd_id: str) -> None:
        self.conn.execute("UPDATE commands SET state = 'expired', result = 'expired' WHERE cmd_id = ?",
                          (cmd_id,))

    def close(self) -> None:
        self.conn.close()
