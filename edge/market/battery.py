"""A battery as the planner sees it, and the ``k=v,...`` spec that names one on the command
line and in ``[market]`` (no numpy here: the CLI and the config import it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Battery:
    capacity_kwh: float
    charge_kw: float  # most power taken from the grid
    discharge_kw: float  # most power given to the grid
    efficiency: float  # round trip, 0 < η ≤ 1
    soc_kwh: float  # now
    soc_min_kwh: float
    soc_max_kwh: float
    cost_eur_per_mwh: float = 0.0  # degradation, per MWh sold

    def problems(self) -> list[str]:
        """What makes this battery impossible, one line each (empty when it is fine)."""
        out = []
        for name in ("capacity_kwh", "charge_kw", "discharge_kw", "efficiency", "soc_kwh", "soc_min_kwh",
                     "soc_max_kwh", "cost_eur_per_mwh"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                out.append(f"{name} must be a finite number, got {value!r}")
        if out:
            return out
        if self.capacity_kwh <= 0:
            out.append(f"capacity_kwh must be > 0, got {self.capacity_kwh}")
        if self.charge_kw < 0 or self.discharge_kw < 0:
            out.append(f"charge_kw and discharge_kw must be >= 0, got {self.charge_kw}, {self.discharge_kw}")
        if not 0 < self.efficiency <= 1:
            out.append(f"efficiency must be in (0, 1], got {self.efficiency}")
        if self.cost_eur_per_mwh < 0:
            out.append(f"cost_eur_per_mwh must be >= 0, got {self.cost_eur_per_mwh}")
        if not 0 <= self.soc_min_kwh <= self.soc_kwh <= self.soc_max_kwh <= self.capacity_kwh:
            out.append(f"must hold 0 <= soc_min_kwh ({self.soc_min_kwh}) <= soc_kwh ({self.soc_kwh}) <= "
                       f"soc_max_kwh ({self.soc_max_kwh}) <= capacity_kwh ({self.capacity_kwh})")
        return out


BATTERY_KEYS = ("capacity_kwh", "power_kw", "charge_kw", "discharge_kw", "efficiency", "soc_kwh", "soc_min_kwh",
                "soc_max_kwh", "cost_eur_per_mwh")
# The battery ARBITRAGE_OPPORTUNITY is computed for unless a site says otherwise.
REFERENCE_BATTERY = ("capacity_kwh=1000,power_kw=500,efficiency=0.9,soc_kwh=100,soc_min_kwh=100,soc_max_kwh=900,"
                     "cost_eur_per_mwh=10")


def parse_battery(spec: str) -> Battery:
    """``capacity_kwh=..,power_kw=..,...`` into a Battery; defaults: soc_min 0, soc_max the
    capacity, soc the minimum, no degradation cost. ``ValueError`` says what is wrong."""
    from difflib import get_close_matches

    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, text = part.partition("=")
        if key not in BATTERY_KEYS:
            near = get_close_matches(key, BATTERY_KEYS, 1)
            raise ValueError(f"unknown key {key!r}{f'; did you mean {near[0]!r}?' if near else ''} "
                             f"(keys: {', '.join(BATTERY_KEYS)})")
        try:
            values[key] = float(text) if sep else float("nan")
        except ValueError:
            raise ValueError(f"{key} must be a number, got {text!r}") from None
    missing = [k for k in ("capacity_kwh", "efficiency") if k not in values]
    if "power_kw" not in values and not {"charge_kw", "discharge_kw"} <= set(values):
        missing.append("power_kw")
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    power = values.get("power_kw")
    soc_min = values.get("soc_min_kwh", 0.0)
    battery = Battery(capacity_kwh=values["capacity_kwh"], charge_kw=values.get("charge_kw", power),
                      discharge_kw=values.get("discharge_kw", power), efficiency=values["efficiency"],
                      soc_kwh=values.get("soc_kwh", soc_min), soc_min_kwh=soc_min,
                      soc_max_kwh=values.get("soc_max_kwh", values["capacity_kwh"]),
                      cost_eur_per_mwh=values.get("cost_eur_per_mwh", 0.0))
    problems = battery.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return battery
