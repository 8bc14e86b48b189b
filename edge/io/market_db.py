"""The market's rows in PostgreSQL: prices and flows by upsert, the days stored whole, the
answers refused, and the alerts outbox (stored once by identity, marked when Kafka has them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import psycopg

from edge.codecs.redata import PriceStep
from edge.codecs.registry import Asset
from edge.market.flows import Flow

_PRICES = """INSERT INTO market_prices AS m (zone, series, start, resolution, price)
SELECT %s, %s, s, r, p FROM unnest(%s::timestamptz[], %s::interval[], %s::float8[]) AS t(s, r, p)
ON CONFLICT (zone, series, start, resolution) DO UPDATE SET price = EXCLUDED.price, fetched_at = now()
WHERE m.price IS DISTINCT FROM EXCLUDED.price
RETURNING start"""

_ALERT = """INSERT INTO alerts (kind, severity, message, alert_key, zone, starts_at, ends_at, body)
VALUES (%(alert_type)s, %(severity)s, %(message)s, %(alert_id)s, %(zone)s, %(starts_at)s, %(ends_at)s, %(body)s)
ON CONFLICT (alert_key) DO NOTHING
RETURNING alert_key"""

_FLOWS = """INSERT INTO interconnection_flows AS f (border, at_time, resolution, flow_direction, physical_flow_mw,
    scheduled_flow_mw, ntc_mw, saturation_percentage)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::interval[], %s::text[], %s::float8[], %s::float8[],
                     %s::float8[], %s::float8[])
ON CONFLICT (border, at_time, resolution) DO UPDATE SET flow_direction = EXCLUDED.flow_direction,
    physical_flow_mw = EXCLUDED.physical_flow_mw, scheduled_flow_mw = EXCLUDED.scheduled_flow_mw,
    ntc_mw = EXCLUDED.ntc_mw, saturation_percentage = EXCLUDED.saturation_percentage, fetched_at = now()
WHERE (f.flow_direction, f.physical_flow_mw, f.scheduled_flow_mw, f.ntc_mw, f.saturation_percentage)
    IS DISTINCT FROM (EXCLUDED.flow_direction, EXCLUDED.physical_flow_mw, EXCLUDED.scheduled_flow_mw,
                      EXCLUDED.ntc_mw, EXCLUDED.saturation_percentage)
RETURNING at_time"""

_DAY = """INSERT INTO market_days (zone, kind, day, steps) VALUES (%s, %s, %s, %s)
ON CONFLICT (zone, kind, day) DO UPDATE SET steps = EXCLUDED.steps, fetched_at = now()"""

SEVERITY = {"NEGATIVE_PRICE": "info", "HIGH_PRICE": "warning", "ARBITRAGE_OPPORTUNITY": "info",
            "DECOUPLING_LIKELY": "warning"}


def store_prices(conn: psycopg.Connection, zone: str, series: str, steps: Sequence[PriceStep]) -> int:
    """Upsert one series' steps in one transaction; returns how many rows are new or changed."""
    with conn.transaction():
        return _prices(conn, zone, series, steps)


def _prices(conn: psycopg.Connection, zone: str, series: str, steps: Sequence[PriceStep]) -> int:
    return len(conn.execute(_PRICES, (zone, series, [s.start for s in steps],
                                      [timedelta(hours=s.hours) for s in steps],
                                      [s.price for s in steps])).fetchall())


def store_day(conn: psycopg.Connection, zone: str, day: date, prices: dict[str, Sequence[PriceStep]],
              flows: Sequence[Flow] | None, whole: Sequence[str], alerts: Sequence[dict]) -> tuple[int, list[dict]]:
    """One fetched day in one transaction: each series' prices, the flows (None: not fetched),
    the kinds of ``whole`` recorded as stored whole for the day, and the alerts not stored yet
    (returned). Returns (price and flow rows new or changed, new alerts)."""
    with conn.transaction():
        changed = sum(_prices(conn, zone, series, steps) for series, steps in prices.items())
        if flows:
            changed += len(conn.execute(_FLOWS, (
                [f.border for f in flows], [f.at_time for f in flows], [timedelta(hours=f.hours) for f in flows],
                [f.flow_direction for f in flows], [f.physical_flow_mw for f in flows],
                [f.scheduled_flow_mw for f in flows], [f.ntc_mw for f in flows],
                [f.saturation_percentage for f in flows])).fetchall())
        for kind in whole:
            count = len(flows or ()) if kind == "flows" else len(prices[kind])
            conn.execute(_DAY, (zone, kind, day, count))
        return changed, _alerts(conn, alerts)


def prices(conn: psycopg.Connection, zone: str, series: str, start: datetime, end: datetime) -> list[PriceStep]:
    """The stored steps of a series starting in [start, end), in time order; where a time
    has both an hourly and a quarter-hourly price, the quarter hours."""
    rows = conn.execute(
        "SELECT DISTINCT ON (start) start, extract(epoch FROM resolution) / 3600, price FROM market_prices "
        "WHERE zone = %s AND series = %s AND start >= %s AND start < %s ORDER BY start, resolution",
        (zone, series, start, end)).fetchall()
    steps = [PriceStep(at, float(hours), price) for at, hours, price in rows]
    return [s for i, s in enumerate(steps) if i == 0 or steps[i - 1].end <= s.start]


def latest_value(conn: psycopg.Connection, device: str, label: str) -> tuple[datetime, float] | None:
    """A device's latest reading of ``label`` (any connector or pin), or None."""
    row = conn.execute("SELECT time, value FROM iot_measurements WHERE device_id = %s AND label = %s "
                       "ORDER BY time DESC LIMIT 1", (device, label)).fetchone()
    return None if row is None else (row[0], row[1])


def assets(conn: psycopg.Connection) -> list[Asset]:
    """The registry's assets (``[[assets]]``, loaded by ``edge registry load``), by id."""
    return [Asset(**model) for (model,) in conn.execute("SELECT model FROM assets ORDER BY asset_id")]


def asset(conn: psycopg.Connection, asset_id: str) -> Asset | None:
    """The registry's asset ``asset_id``, or None."""
    row = conn.execute("SELECT model FROM assets WHERE asset_id = %s", (asset_id,)).fetchone()
    return None if row is None else Asset(**row[0])


def whole_days(conn: psycopg.Connection, zone: str, since: date) -> set[tuple[str, date]]:
    """(kind, day) of every day since ``since`` stored whole."""
    return set(conn.execute("SELECT kind, day FROM market_days WHERE zone = %s AND day >= %s",
                            (zone, since)).fetchall())


def store_reject(conn: psycopg.Connection, kind: str, day: date, reason: str, detail: str, body: bytes) -> bool:
    """Keep an answer that could not be read, once by its digest; True when new."""
    digest = hashlib.sha256(kind.encode() + b"\0" + body).hexdigest()
    with conn.transaction():
        return conn.execute("INSERT INTO market_rejects (digest, kind, day, reason, detail, body) "
                            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING digest",
                            (digest, kind, day, reason, detail[:2000], body)).fetchone() is not None


def unsent_alerts(conn: psycopg.Connection) -> list[tuple[str, dict[str, Any], dict[str, int] | None]]:
    """(alert_id, body, send marks or None) of every market alert Kafka is not known to have."""
    rows = conn.execute("SELECT alert_key, body, send_marks FROM alerts WHERE alert_key IS NOT NULL "
                        "AND sent_at IS NULL ORDER BY id").fetchall()
    return [(key, body, {int(p): int(o) for p, o in marks.items()} if marks else None) for key, body, marks in rows]


def mark_attempt(conn: psycopg.Connection, keys: Sequence[str], marks: dict[int, int]) -> None:
    """Record the topic's end offsets before the first send of ``keys`` (kept if set)."""
    with conn.transaction():
        conn.execute("UPDATE alerts SET send_marks = %s WHERE alert_key = ANY(%s) AND send_marks IS NULL",
                     (json.dumps({str(p): o for p, o in marks.items()}), list(keys)))


def mark_sent(conn: psycopg.Connection, keys: Sequence[str]) -> None:
    with conn.transaction():
        conn.execute("UPDATE alerts SET sent_at = now() WHERE alert_key = ANY(%s) AND sent_at IS NULL", (list(keys),))


def store_alerts(conn: psycopg.Connection, alerts: Sequence[dict]) -> list[dict]:
    """Insert the alerts not stored yet (by ``alert_id``); returns those, in order."""
    with conn.transaction():
        return _alerts(conn, alerts)


def _alerts(conn: psycopg.Connection, alerts: Sequence[dict]) -> list[dict]:
    new = []
    for alert in alerts:
        row = conn.execute(_ALERT, {**alert, "severity": SEVERITY.get(alert["alert_type"], "info"),
                                    "message": _message(alert), "body": json.dumps(alert)}).fetchone()
        if row is not None:
            new.append(alert)
    return new


def _message(alert: dict) -> str:
    if alert["alert_type"] == "DECOUPLING_LIKELY":
        return (f"{alert['zone']}: {alert['flow_direction']} at {alert['saturation_percentage']} % of its "
                f"{alert['ntc_mw']} MW from {alert['starts_at']} to {alert['ends_at']}: prices likely to decouple")
    if alert["alert_type"] == "ARBITRAGE_OPPORTUNITY":
        return (f"{alert['zone']}: a battery earns {alert['expected_profit_eur']} EUR "
                f"({alert['starts_at']} to {alert['ends_at']}; spread {alert['spread']} EUR/MWh)")
    return (f"{alert['zone']}: {alert['alert_type']} {alert['price']} EUR/MWh "
            f"from {alert['starts_at']} to {alert['ends_at']}")
