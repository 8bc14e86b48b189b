"""What the command actor sends for the market: the plan's first step as a set_power valid
for that step, not sent twice, held back by the cooldown; PV curtailed at negative prices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge.codecs.redata import PriceStep
from edge.codecs.registry import Asset
from edge.market.setpoints import Last, cmd_id, decide

T0 = datetime(2026, 7, 26, 10, tzinfo=UTC)
BATTERY = Asset("bat-1", "battery", "bat-0001", capacity_kwh=200, charge_kw=100, discharge_kw=100, efficiency=0.9,
                soc_min_kwh=20, soc_max_kwh=190, soc_label="soc", cooldown_s=600)
PV = Asset("pv-1", "pv", "inv-1", max_kw=250, cooldown_s=600)


def hours(*prices: float) -> list[PriceStep]:
    return [PriceStep(T0 + timedelta(hours=i), 1.0, p) for i, p in enumerate(prices)]


def test_a_battery_charges_in_the_negative_hour_for_the_dear_one_later():
    prices = hours(-15, 5, 150)
    sp = decide(BATTERY, prices, T0 + timedelta(minutes=5), soc_kwh=20, last=None)
    assert sp is not None and 99 <= sp.params["power_kw"] <= 100  # full power (on whole levels): -15 to 150
    assert (sp.valid_from, sp.valid_until) == (T0, T0 + timedelta(hours=1))
    assert sp.params["valid_until"] == "2026-07-26T11:00:00+00:00" and sp.expected_profit_eur > 0
    assert sp.cmd_id == cmd_id("bat-1", T0)  # the same step decided again: the same command
    later = decide(BATTERY, prices, T0 + timedelta(hours=2, minutes=1), soc_kwh=110, last=None)
    assert later is not None and later.params["power_kw"] < 0 and later.cmd_id != sp.cmd_id


def test_the_same_setpoint_is_not_sent_twice_and_a_new_one_waits_out_the_cooldown():
    prices = hours(-15, 5, 150)
    now = T0 + timedelta(minutes=5)
    holding = Last(T0 + timedelta(minutes=1), 100.0, T0 + timedelta(hours=1))
    assert decide(BATTERY, prices, now, soc_kwh=20, last=holding) is None  # unchanged
    other = Last(T0 + timedelta(minutes=1), -30.0, T0 + timedelta(hours=1))
    assert decide(BATTERY, prices, now, soc_kwh=20, last=other) is None  # changed, within the cooldown
    assert decide(BATTERY, prices, T0 + timedelta(minutes=12), soc_kwh=20, last=other) is not None
    ended = Last(T0 - timedelta(minutes=3), 100.0, T0)  # the last one's step is over: a new step's command
    assert decide(BATTERY, prices, now, soc_kwh=20, last=ended) is not None


def test_nothing_without_a_price_for_now_or_a_known_state_of_charge():
    assert decide(BATTERY, hours(1, 2), T0 + timedelta(hours=3), soc_kwh=50, last=None) is None
    assert decide(BATTERY, hours(1, 2), T0 - timedelta(minutes=1), soc_kwh=50, last=None) is None
    assert decide(BATTERY, hours(1, 2), T0, soc_kwh=None, last=None) is None


def test_pv_is_curtailed_while_the_price_is_negative_and_released_after():
    prices = hours(-15, 5)
    curtail = decide(PV, prices, T0 + timedelta(minutes=1), None, None)
    assert curtail is not None and curtail.params["max_kw"] == 0.0
    assert decide(PV, prices, T0 + timedelta(minutes=2), None, Last(T0, 0.0, T0 + timedelta(hours=1))) is None
    release = decide(PV, prices, T0 + timedelta(hours=1, minutes=1), None, Last(T0, 0.0, T0 + timedelta(hours=1)))
    assert release is not None and release.params["max_kw"] == 250
    assert decide(PV, hours(5, 6), T0, None, None) is None  # never curtailed: nothing to send
