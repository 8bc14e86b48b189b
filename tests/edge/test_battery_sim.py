"""The simulated battery: set_power obeyed within its limits and validity, the energy model
of docs/market.md, every command answered."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from edge.config import MqttConfig
from edge.market.battery import parse_battery
from edge.tools.battery import SimBattery

NOW = datetime(2026, 7, 26, 12, tzinfo=UTC)


def sim(**kw) -> SimBattery:
    spec = "capacity_kwh=200,power_kw=100,efficiency=0.81,soc_kwh=100,soc_min_kwh=20,soc_max_kwh=190"
    return SimBattery(MqttConfig(), "bat-1", parse_battery(spec), **kw)


def test_set_power_is_held_from_valid_from_until_valid_until_under_the_energy_model():
    b = sim()
    later = NOW + timedelta(minutes=30)
    assert b.apply("set_power", {"power_kw": 50, "valid_from": later.isoformat(),
                                 "valid_until": (later + timedelta(hours=1)).isoformat()}, NOW)[0] == "accepted"
    b.advance(1800, NOW)  # before valid_from: idle
    assert b.power_kw == 0 and b.soc_kwh == 100
    b.advance(3600, later)  # an hour charging at 50 kW: +50 * sqrt(0.81) = 45 kWh
    assert b.power_kw == 50 and math.isclose(b.soc_kwh, 145)
    b.advance(60, later + timedelta(hours=1))  # valid_until passed: back to 0 kW
    assert b.power_kw == 0
    b.apply("set_power", {"power_kw": -90}, NOW)
    b.advance(3600, NOW)  # discharging 90 kW for an hour takes 90 / 0.9 = 100 kWh, floored at 20
    assert b.soc_kwh == 45 and b.power_kw == -90
    b.advance(3600, NOW)
    assert b.soc_kwh == 20 and b.power_kw == 0  # at the floor the power drops
    assert b.soc_pct == 10.0


def test_every_command_is_answered_and_a_bad_setpoint_is_rejected_with_why():
    b = sim()
    assert b.apply("set_power", {"power_kw": 150}, NOW) == ("rejected", "150 kW is beyond the 100.0 kW limit")
    assert b.apply("set_power", {"power_kw": "lots"}, NOW)[0] == "rejected"
    assert b.apply("set_power", {"power_kw": 10, "valid_until": (NOW - timedelta(seconds=1)).isoformat()},
                   NOW)[0] == "rejected"
    assert b.apply("set_power", {"power_kw": 10, "valid_from": "2026-07-26T12:00:00"}, NOW)[0] == "rejected"
    assert b.apply("update_config", {}, NOW)[0] == "unsupported"
    assert b.apply("request_status", {}, NOW)[0] == "accepted"
    assert b.scheduled == []
