"""The market's rows in PostgreSQL: prices by upsert, alerts once by their identity."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

import psycopg

from edge.codecs.redata import PriceStep

_PRICES = """INSERT INTO market_prices AS m (zone, series, start, resolution, price)
SELECT %s, %s, s, r, p FROM unnest(%s::timestamptz[], %s::interval[], %s::float8[]) AS t(s, r, p)
ON CONFLICT (zone, series, start, resolution) DO UPDATE SET price = EXCLUDED.price, fetched_at = now()
WHERE m.price IS DISTINCT FROM EXCLUDED.price
RETURNING start"""

_ALERT = """INSERT INTO alerts (kind, severity, message, alert_key, zone, starts_at, ends_at, body)
VALUES (%(alert_type)s, %(severity)s, %(message)s, %(alert_id)s, %(zone)s, %(starts_at)s, %(ends_at)s, %(body)s)
ON CONFLICT (alert_key) DO NOTHING
RETURNING alert_key"""

SEVERITY = {"NEGATIVE_PRICE": "info", "HIGH_PRICE": "warning", "ARBITRAGE_OPPORTUNITY": "info"}


def store_prices(conn: psycopg.Connection, zone: str, series: str, steps: Sequence[PriceStep]) -> int:
    """Upsert one series' steps in one transaction; returns how many rows are new or changed."""
    with conn.transaction():
        rows = conn.execute(_PRICES, (zone, series, [s.start for s in steps],
                                      [timedelta(hours=s.hours) for s in steps],
                                      [s.price for s in steps])).fetchall()
    return len(rows)


def store_alerts(conn: psycopg.Connection, alerts: Sequence[dict]) -> list[dict]:
    """Insert the alerts not stored yet (by ``alert_id``); returns those, in order."""
    new = []
    with conn.transaction():
        for alert in alerts:
            row = conn.execute(_ALERT, {**alert, "severity": SEVERITY.get(alert["alert_type"], "info"),
                                        "message": _message(alert), "body": json.dumps(alert)}).fetchone()
            if row is not None:
                new.append(alert)
    return new


def _message(alert: dict) -> str:
    if alert["alert_type"] == "ARBITRAGE_OPPORTUNITY":
        return (f"{alert['zone']}: a battery earns {alert['expected_profit_eur']} EUR "
                f"({alert['starts_at']} to {alert['ends_at']}; spread {alert['spread']} EUR/MWh)")
    return (f"{alert['zone']}: {alert['alert_type']} {alert['price']} EUR/MWh "
            f"from {alert['starts_at']} to {alert['ends_at']}")
