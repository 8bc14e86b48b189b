"""Battery dispatch over a known price horizon: the schedule that earns the most.

The energy model, used by the planner, its tests and ``edge market plan`` alike: in a
step of ``h`` hours at net power ``p`` kW (one net power per step, never charging and
discharging at once),

- ``p > 0`` charges: the state of charge gains ``p·h·√η`` kWh, and ``p·h`` kWh are bought
  at the step's price;
- ``p < 0`` discharges: the state of charge loses ``|p|·h/√η`` kWh, ``|p|·h`` kWh are sold
  at the step's price, and degradation costs ``cost_eur_per_mwh`` per MWh sold;

``η`` is the round-trip efficiency. The state of charge stays within
``[soc_min_kwh, soc_max_kwh]`` at every step's end, ``p`` within the charge and discharge
limits; the final state of charge is free unless an end is asked for (then at least that).
Profit in euros = sold − bought − degradation (prices in €/MWh).

The planner is dynamic programming over state-of-charge levels, exact for its
discretization: ``levels`` levels evenly spaced from ``soc_min_kwh`` to ``soc_max_kwh``
(both limits are levels). The battery's own state of charge need not be a level: it stays
there until a step moves it onto any level that step's power reaches; from then on each
step goes from level ``i`` to any level ``j`` the power limits reach in whole levels. A
move's reward depends only on ``j − i`` and is linear on each side of 0, so the best move up
and the best move down from every level are two sliding-window maxima (``O(levels ×
reach)`` per step, in numpy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge.codecs.redata import PriceStep
from edge.market.battery import Battery

EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Step:
    start: datetime
    hours: float
    price: float  # €/MWh
    power_kw: float  # > 0 charging, < 0 discharging
    soc_kwh: float  # at the step's end


@dataclass(frozen=True, slots=True)
class Plan:
    profit_eur: float
    steps: tuple[Step, ...]

    def as_dict(self) -> dict:
        return {"profit_eur": round(self.profit_eur, 6),
                "steps": [{"start": s.start.isoformat(), "power_kw": round(s.power_kw, 6),
                           "soc_kwh": round(s.soc_kwh, 6)} for s in self.steps]}


class PlanError(ValueError):
    """The battery or the horizon cannot be planned (the message says why)."""


def soc_change(battery: Battery, hours: float, power_kw: float) -> float:
    """kWh the state of charge gains (> 0) or loses (< 0) in one step."""
    root = math.sqrt(battery.efficiency)
    return power_kw * hours * root if power_kw > 0 else power_kw * hours / root


def earnings(prices: Sequence[PriceStep], battery: Battery, powers: Sequence[float]) -> float:
    """What a schedule earns under the energy model, in euros."""
    total = 0.0
    for step, p in zip(prices, powers, strict=True):
        energy_mwh = abs(p) * step.hours / 1000
        if p > 0:
            total -= energy_mwh * step.price
        elif p < 0:
            total += energy_mwh * (step.price - battery.cost_eur_per_mwh)
    return total


def violations(prices: Sequence[PriceStep], battery: Battery, powers: Sequence[float],
               tolerance: float = 1e-6) -> list[str]:
    """Every limit a schedule breaks (empty when it keeps them all)."""
    out, soc = [], battery.soc_kwh
    for t, (step, p) in enumerate(zip(prices, powers, strict=True)):
        if p > battery.charge_kw + tolerance or -p > battery.discharge_kw + tolerance:
            out.append(f"step {t}: power {p} kW beyond the limits")
        soc += soc_change(battery, step.hours, p)
        if not battery.soc_min_kwh - tolerance <= soc <= battery.soc_max_kwh + tolerance:
            out.append(f"step {t}: state of charge {soc} kWh beyond the limits")
    return out


def levels_of(battery: Battery, levels: int) -> np.ndarray:
    """The state-of-charge grid: ``levels`` evenly spaced from ``soc_min_kwh`` to
    ``soc_max_kwh``, both included (one level when they are equal)."""
    if levels < 2 or battery.soc_max_kwh <= battery.soc_min_kwh:
        return np.array([battery.soc_min_kwh])
    return np.linspace(battery.soc_min_kwh, battery.soc_max_kwh, levels)


def plan(prices: Sequence[PriceStep], battery: Battery, levels: int = 201,
         end_soc_kwh: float | None = None) -> Plan:
    """The schedule that earns the most over ``prices``: exact over the schedules that stay
    at ``soc_kwh`` until they move onto a level of ``levels_of``, then move between levels."""
    problems = battery.problems()
    if problems:
        raise PlanError("; ".join(problems))
    if levels < 2:
        raise PlanError(f"levels must be >= 2, got {levels}")
    grid = levels_of(battery, _levels(battery, levels, {step.hours for step in prices}))
    n = len(grid)
    delta = float(grid[1] - grid[0]) if n > 1 else 0.0
    root = math.sqrt(battery.efficiency)
    index = np.arange(n)
    value = np.zeros(n)
    if end_soc_kwh is not None:
        if end_soc_kwh > grid[-1] + EPS:
            raise PlanError(f"end state of charge {end_soc_kwh} kWh is above the highest level {grid[-1]} kWh")
        value[grid < end_soc_kwh - EPS] = -np.inf
    if not prices:
        return Plan(0.0, ())
    # Backward over the levels: togo[t][i] is the best from the start of step t at level i.
    togo = [value] * (len(prices) + 1)
    choices = np.empty((len(prices), n), dtype=np.int64)
    windows = _Windows(n)
    for t in range(len(prices) - 1, 0, -1):
        step = prices[t]
        up = _reach(battery.charge_kw * step.hours * root, delta, n)
        down = _reach(battery.discharge_kw * step.hours / root, delta, n)
        # Up from i to j = i + m (charging): V[j] − a·δ·(j − i), a = price / (1000 √η) € per kWh stored.
        a = step.price / (1000 * root) * delta
        up_value, up_to = windows.best(value - a * index, up, after=True)
        up_value += a * index
        # Down from i to j = i − m (discharging): V[j] + b·δ·(i − j), b = √η (price − cost) / 1000.
        b = root * (step.price - battery.cost_eur_per_mwh) / 1000 * delta
        down_value, down_to = windows.best(value - b * index, down, after=False)
        down_value += b * index
        take_up = up_value >= down_value
        value = togo[t] = np.where(take_up, up_value, down_value)
        choices[t] = np.where(take_up, up_to, down_to)
    # The battery's own state of charge need not be a level: it stands still there until
    # some step t moves it onto any level that step's power reaches (idle steps earn 0).
    idle_ok = end_soc_kwh is None or battery.soc_kwh >= end_soc_kwh - EPS
    change = grid - battery.soc_kwh
    price = np.array([step.price for step in prices])[:, None]
    hours = np.array([step.hours for step in prices])[:, None]
    reward = np.where(change > 0, -change * price / (1000 * root),
                      -change * root * (price - battery.cost_eur_per_mwh) / 1000)
    reachable = (change <= battery.charge_kw * hours * root * (1 + EPS) + EPS) & \
        (-change <= battery.discharge_kw * hours / root * (1 + EPS) + EPS)
    total = np.where(reachable, reward + np.stack(togo[1:]), -np.inf)
    per_step = total.max(axis=1)
    best_t = int(np.argmax(per_step))  # the earliest step of the best
    best_total, best_level = float(per_step[best_t]), int(np.argmax(total[best_t]))
    if idle_ok and best_total <= EPS * max(1.0, abs(best_total)):  # nothing beats standing still
        best_total, best_t, best_level = 0.0, -1, -1
    if not math.isfinite(best_total):
        raise PlanError(f"no schedule reaches {end_soc_kwh} kWh by the end within the power limits")
    steps, soc, level = [], battery.soc_kwh, best_level
    for t, step in enumerate(prices):
        if t > best_t >= 0:
            level = int(choices[t, level])
        if best_t < 0 or t < best_t:
            power, new_soc = 0.0, soc
        else:
            new_soc = float(grid[level])
            moved = new_soc - soc
            power = moved / (step.hours * root) if moved > 0 else moved * root / step.hours
        soc = new_soc
        steps.append(Step(step.start, step.hours, step.price, power, soc))
    return Plan(best_total, tuple(steps))


def _levels(battery: Battery, levels: int, hours: set[float]) -> int:
    """How many levels to use, at most ``levels``: a battery moves whole levels in a step, so
    where full power reaches 12.7 levels it would use 12. Of the counts from three quarters
    of ``levels`` up, the one whose full-power moves (charge and discharge, every step
    length) lose the least to that rounding, relatively; the most levels on a tie."""
    span = battery.soc_max_kwh - battery.soc_min_kwh
    if span <= 0 or levels < 8:
        return levels
    root = math.sqrt(battery.efficiency)
    moves = [kwh for h in hours for kwh in (battery.charge_kw * h * root, battery.discharge_kw * h / root)
             if 0 < kwh < span]
    if not moves:
        return levels

    def loss(count: int) -> float:
        delta = span / (count - 1)
        return sum((kwh / delta - math.floor(kwh / delta + EPS)) / max(kwh / delta, 1) for kwh in moves)

    return min(range(levels, math.ceil(levels * 0.75) - 1, -1), key=loss)


def _reach(kwh: float, delta: float, n: int) -> int:
    """Levels one step can move: the state-of-charge change the power allows, in levels."""
    if delta <= 0:
        return 0
    return min(n - 1, math.floor(kwh / delta + EPS))


class _Windows:
    """Sliding-window maxima over a state-of-charge vector: for every level i, the best of
    ``values[i .. i + reach]`` (after) or ``values[i − reach .. i]``, and where it is. The
    padded buffers and their window views are made once per plan and reused every step."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows = np.arange(n)
        self.after = np.full(2 * n, -np.inf)  # values, then -inf past the top
        self.before = np.full(2 * n, -np.inf)  # -inf below the bottom, then values reversed
        self.views: dict[tuple[int, bool], np.ndarray] = {}

    def best(self, values: np.ndarray, reach: int, after: bool) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        if after:
            self.after[:n] = values
        else:
            # Reversed, so that window i starts at level i and goes down: nearest first, and a
            # tie keeps the smaller move (standing still first).
            self.before[:n] = values[::-1]
        view = self.views.get((reach, after))
        if view is None:
            buffer = self.after if after else self.before
            view = self.views[(reach, after)] = sliding_window_view(buffer[:n + reach], reach + 1)
        if after:
            at = view.argmax(axis=1)
            return view[self.rows, at], self.rows + at
        at = view.argmax(axis=1)[::-1]  # window n-1-i of the reversed values is level i's
        return view[self.rows[::-1], at], self.rows - at
