"""The server's ``device_commands`` table: commands written first, then claimed and sent by
the command actor, then moved on by the answers the sink writes (edge/io/sink_db.py).

States (docs/commands.md): pending -> sent -> delivered -> accepted | rejected | error |
unsupported | expired. ``expire`` closes what its deadline left behind: a command never
sent is ``expired``; one sent whose gateway never answered by the deadline plus a grace is
``expired`` too; one delivered whose device never answered is ``error``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from edge.codecs.records import iso

STATES = ("pending", "sent", "delivered", "accepted", "rejected", "error", "unsupported", "expired")
PAUSED = "commands_paused"  # edge_settings key: the kill switch


@dataclass(frozen=True, slots=True)
class Command:
    cmd_id: str
    device_id: str
    gateway_id: str | None  # the row's, else the gateway that last heard the device
    kind: str
    cmd: str
    params: dict[str, Any]
    topic: str | None
    deadline: datetime
    attempts: int
    direct: bool = False  # heard on the central broker itself (the bridge), through no gateway

    def direct_message(self, now: datetime) -> tuple[str, bytes]:
        """(topic, payload) for a device on the central broker itself: what a gateway's
        CommandRouter would publish to it on the site broker."""
        if self.kind == "f2":
            return str(self.topic), json.dumps(self.params, separators=(",", ":")).encode()
        body = {"v": 2, "cmd_id": self.cmd_id, "ts": iso(now), "cmd": self.cmd, "params": self.params}
        return f"iot/{self.device_id}/command", json.dumps(body, separators=(",", ":")).encode()

    def downlink(self) -> bytes:
        """What the gateway's CommandRouter takes on edge/<gateway>/down."""
        doc: dict[str, Any] = {"cmd_id": self.cmd_id, "device_id": self.device_id, "kind": self.kind,
                               "deadline": self.deadline.isoformat()}
        if self.kind == "f2":
            doc |= {"topic": self.topic, "payload": self.params}
        else:
            doc |= {"cmd": self.cmd, "params": self.params}
        return json.dumps(doc, separators=(",", ":")).encode()


def create(conn: psycopg.Connection, device_id: str, cmd: str, params: dict[str, Any], deadline: datetime, *,
           kind: str = "v2", topic: str | None = None, gateway_id: str | None = None, source: str = "operator",
           asset_id: str | None = None, cmd_id: str | None = None) -> str | None:
    """Write a pending command; its id, or None when a command with ``cmd_id`` exists already
    (a decision made twice writes one row)."""
    cmd_id = cmd_id or str(uuid.uuid4())
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO device_commands (cmd_id, device_id, gateway_id, cmd, params, deadline, kind, topic, "
            "source, asset_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (cmd_id) DO NOTHING RETURNING cmd_id",
            (cmd_id, device_id, gateway_id, cmd, json.dumps(params), deadline, kind, topic, source, asset_id)
        ).fetchone()
    return None if row is None else cmd_id


_CLAIM = """SELECT c.cmd_id::text, c.device_id, coalesce(c.gateway_id, s.gateway_id), c.kind, c.cmd, c.params,
    c.topic, c.deadline, c.attempts, s.device_id IS NOT NULL AND s.gateway_id IS NULL AND c.gateway_id IS NULL
FROM device_commands c LEFT JOIN device_state s ON s.device_id = c.device_id
WHERE c.status = 'pending' AND c.deadline > now()
ORDER BY c.created_at
LIMIT %s
FOR UPDATE OF c SKIP LOCKED"""


def claim(conn: psycopg.Connection, limit: int) -> list[Command]:
    """Pending commands still valid, oldest first, locked for this transaction (another
    process's claim skips them). Call inside ``conn.transaction()``."""
    return [Command(*row) for row in conn.execute(_CLAIM, (limit,)).fetchall()]


def mark_sent(conn: psycopg.Connection, sent: Sequence[tuple[str, str | None]]) -> None:
    """(cmd_id, gateway or None for a direct device) the central broker acknowledged."""
    if sent:
        conn.execute("UPDATE device_commands AS c SET status = 'sent', sent_at = now(), status_at = now(), "
                     "attempts = c.attempts + 1, gateway_id = a.gw FROM unnest(%s::uuid[], %s::text[]) AS a(id, gw) "
                     "WHERE c.cmd_id = a.id AND c.status = 'pending'",
                     ([c for c, _ in sent], [g for _, g in sent]))


def refuse(conn: psycopg.Connection, cmd_id: str, detail: str) -> None:
    """A command that can never be sent (no gateway known for its device): ``error`` now,
    not retried until its deadline."""
    conn.execute("UPDATE device_commands SET status = 'error', detail = %s, status_at = now(), answered_at = now() "
                 "WHERE cmd_id = %s AND status = 'pending'", (detail, cmd_id))


def count_attempt(conn: psycopg.Connection, cmd_ids: Sequence[str]) -> None:
    if cmd_ids:
        conn.execute("UPDATE device_commands SET attempts = attempts + 1 WHERE cmd_id = ANY(%s::uuid[])",
                     (list(cmd_ids),))


_EXPIRE = (
    ("expired", "pending", "deadline passed before it could be sent"),
    ("expired", "sent", "no answer from its gateway by the deadline"),
    ("error", "delivered", "delivered, and the device never answered by the deadline"),
)


def expire(conn: psycopg.Connection, grace_s: float) -> dict[str, int]:
    """Close what the deadline left open; returns how many per state left. ``grace_s``: how
    long after the deadline a sent or delivered command waits for the answer on its way."""
    out = {}
    with conn.transaction():
        for status, was, detail in _EXPIRE:
            grace = 0.0 if was == "pending" else grace_s
            out[was] = conn.execute(
                "UPDATE device_commands SET status = %s, detail = %s, status_at = now(), answered_at = now() "
                "WHERE status = %s AND deadline + make_interval(secs => %s) <= now()",
                (status, detail, was, grace)).rowcount
    return out


def paused(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT value FROM edge_settings WHERE key = %s", (PAUSED,)).fetchone()
    return row is not None and row[0] == "true"


def set_paused(conn: psycopg.Connection, value: bool) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO edge_settings (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                     "SET value = EXCLUDED.value", (PAUSED, "true" if value else "false"))


def listing(conn: psycopg.Connection, device: str | None = None, state: str | None = None,
            limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT cmd_id::text, device_id, gateway_id, cmd, params, status, detail, deadline, created_at, sent_at, "
        "answered_at, attempts, source, ota_state, ota_progress FROM device_commands "
        "WHERE (%(device)s::text IS NULL OR device_id = %(device)s) "
        "AND (%(state)s::text IS NULL OR status = %(state)s) "
        "ORDER BY created_at DESC LIMIT %(limit)s", {"device": device, "state": state, "limit": limit})
    names = [d.name for d in rows.description]
    return [dict(zip(names, r, strict=True)) for r in rows.fetchall()]


def last_market(conn: psycopg.Connection, asset_id: str) -> tuple[datetime, dict[str, Any]] | None:
    """(created_at, params) of the last market command for ``asset_id``, or None."""
    row = conn.execute("SELECT created_at, params FROM device_commands WHERE source = 'market' AND asset_id = %s "
                       "ORDER BY created_at DESC LIMIT 1", (asset_id,)).fetchone()
    return None if row is None else (row[0], row[1])

