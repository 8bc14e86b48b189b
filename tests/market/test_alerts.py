"""Market alerts from price steps: runs of negative and high prices, and the arbitrage a
real battery would earn (not the field systems' bare spread)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.codecs.redata import PriceStep, read_prices
from edge.market.alerts import Thresholds, arbitrage_alert, price_alerts
from edge.market.plan import Battery

MARKET = Path(__file__).resolve().parents[2] / "fixtures" / "market"
BATTERY = Battery(1000, 500, 500, 0.9, 100, 100, 900, 10)


def day() -> list[PriceStep]:
    return read_prices((MARKET / "prices-2026-07-26-hourly.json").read_bytes())


def test_a_run_of_negative_hours_and_a_run_of_high_hours_are_one_alert_each():
    alerts = price_alerts(day())
    assert [(a["alert_type"], a["starts_at"], a["ends_at"], a["price"]) for a in alerts] == [
        ("NEGATIVE_PRICE", "2026-07-26T12:00:00+00:00", "2026-07-26T13:00:00+00:00", -15.0),
        ("HIGH_PRICE", "2026-07-26T18:00:00+00:00", "2026-07-26T21:00:00+00:00", 155.0)]
    assert all(a["zone"] == "BZN|ES" and a["currency"] == "EUR" for a in alerts)
    assert price_alerts(day()) == alerts  # the same ids however often the day is looked at
    assert len({a["alert_id"] for a in alerts}) == 2
    assert [a["alert_type"] for a in price_alerts(day(), thresholds=Thresholds(high_eur_per_mwh=160))] == [
        "NEGATIVE_PRICE"]


def test_arbitrage_is_what_the_battery_earns_charging_before_discharging():
    alert = arbitrage_alert(day(), BATTERY)
    assert alert is not None and alert["alert_type"] == "ARBITRAGE_OPPORTUNITY"
    assert alert["spread"] == 170.0 and (alert["min_price"], alert["max_price"]) == (-15.0, 155.0)
    assert alert["best_charge_at"] < alert["best_discharge_at"]
    assert 0 < alert["expected_profit_eur"] < 800 * 0.9 * 170 / 1000  # below the bare spread's promise
    assert arbitrage_alert(day(), BATTERY) == alert


def test_a_wide_spread_whose_cheap_hours_come_last_is_no_opportunity():
    t0 = datetime(2026, 7, 26, tzinfo=UTC)
    falling = [PriceStep(t0 + timedelta(hours=i), 1.0, 200 - 10 * i) for i in range(20)]  # spread 190
    assert arbitrage_alert(falling, BATTERY) is None  # an empty battery cannot sell first
    full = Battery(1000, 500, 500, 0.9, 900, 100, 900, 10)
    alert = arbitrage_alert(falling, full)  # a full one can: sell early, buy back late
    assert alert is not None and alert["best_discharge_at"] < (alert["best_charge_at"] or "~")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-100, 300, allow_nan=False), max_size=60), st.sets(st.integers(0, 59), max_size=5))
def test_the_runs_cover_exactly_the_steps_beyond_each_threshold_once(prices, holes):
    t0 = datetime(2026, 7, 26, tzinfo=UTC)
    steps = [PriceStep(t0 + timedelta(hours=i), 1.0, p) for i, p in enumerate(prices) if i not in holes]
    alerts = price_alerts(steps)
    for kind, inside, pick in (("NEGATIVE_PRICE", lambda p: p < 0, min), ("HIGH_PRICE", lambda p: p > 120, max)):
        runs = [a for a in alerts if a["alert_type"] == kind]
        covered = [s for s in steps for a in runs if a["starts_at"] <= s.start.isoformat() < a["ends_at"]]
        assert covered == [s for s in steps if inside(s.price)]  # each such step in exactly one run
        for a in runs:
            within = [s.price for s in steps if a["starts_at"] <= s.start.isoformat() < a["ends_at"]]
            assert a["price"] == pick(within)
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
