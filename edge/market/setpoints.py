"""From known prices to a command for each asset: what the command actor sends for the
market (docs/commands.md, "Setpoints").

For a battery: the planner's schedule over the known prices from the current step on,
starting from the state of charge its telemetry last reported; its first step's power is
the setpoint, ``set_power`` valid for that step only (``valid_from`` its start,
``valid_until`` its end, which is also the command's deadline). A setpoint equal to the
last one sent is not sent again while that one still holds; a different one waits out the
asset's ``cooldown_s`` after the last one sent, unless the last one has ended.

For a PV inverter: while the price is negative, ``set_power`` with ``max_kw`` 0 (curtail)
for the step; at a non-negative price after a curtailment, its rating again.

The command's identity is the asset and the step (a uuid5), so deciding twice for the same
step (a replayed alert, a restart) writes one command.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from edge.codecs.redata import PriceStep
from edge.codecs.registry import Asset
from edge.market.assets import battery as battery_of
from edge.market.plan import plan

NAMESPACE = uuid.UUID("6f1d5c2e-8a4b-4c1e-9d3f-5b7a2e0c4d19")


@dataclass(frozen=True, slots=True)
class Last:
    """The last market command sent to an asset."""

    sent_at: datetime
    value: float  # power_kw for a battery, max_kw for PV
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class Setpoint:
    cmd_id: str
    asset_id: str
    device_id: str
    params: dict
    valid_from: datetime
    valid_until: datetime
    expected_profit_eur: float | None = None


def cmd_id(asset_id: str, start: datetime) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{asset_id}/{start.isoformat()}"))


def current(prices: Sequence[PriceStep], now: datetime) -> list[PriceStep]:
    """The steps from the one holding ``now`` on (none when ``now`` is past the last)."""
    return [s for s in prices if s.end > now]


def decide(asset: Asset, prices: Sequence[PriceStep], now: datetime, soc_kwh: float | None,
           last: Last | None, levels: int = 201) -> Setpoint | None:
    """The command to send ``asset`` now, or None (nothing known, nothing new, cooling down)."""
    ahead = current(prices, now)
    if not ahead or ahead[0].start > now:
        return None  # no price for this moment
    step = ahead[0]
    profit = None
    if asset.kind == "battery":
        if soc_kwh is None:
            return None  # a battery whose charge is unknown is not driven blind
        result = plan(ahead, battery_of(asset, soc_kwh), levels=levels)
        value = round(result.steps[0].power_kw, 3)
        params = {"power_kw": value}
        profit = round(result.profit_eur, 2)
    else:
        if step.price >= 0 and (last is None or last.value != 0.0):
            return None  # not curtailed, nothing to lift
        value = 0.0 if step.price < 0 else asset.max_kw
        params = {"max_kw": value}
    if last is not None:
        holding = last.valid_until > now
        if holding and last.value == value:
            return None
        if holding and (now - last.sent_at).total_seconds() < asset.cooldown_s:
            return None
    params |= {"valid_from": step.start.isoformat(), "valid_until": step.end.isoformat()}
    return Setpoint(cmd_id(asset.id, step.start), asset.id, asset.device, params, step.start, step.end, profit)
