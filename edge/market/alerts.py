"""Market alerts from a zone's price steps (protocols.md §4, stream ``market-alerts``).

- ``NEGATIVE_PRICE``: one alert per run of consecutive steps priced below 0, with the
  lowest price of the run: ``{alert_type, zone, price, currency, starts_at, ends_at}``.
- ``HIGH_PRICE``: the same for runs above the threshold (120 €/MWh by default), with the
  highest price.
- ``ARBITRAGE_OPPORTUNITY``: what a real battery earns over the horizon (charging before
  discharging, its efficiency, power and energy limits and degradation: ``edge.market.plan``),
  raised when that profit reaches a threshold; it carries the expected profit in euros, when
  the plan first charges and first discharges, and the field systems' bare spread
  (max − min) as a field of its own.

Every alert has an ``alert_id`` made of its zone, type and window, the same however often
the same prices are looked at: the market actor stores and sends each id once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.codecs.redata import PriceStep
from edge.market.battery import Battery

ZONE = "BZN|ES"


@dataclass(frozen=True, slots=True)
class Thresholds:
    high_eur_per_mwh: float = 120.0
    arbitrage_min_profit_eur: float = 1.0  # for the reference battery, over the horizon


def alert_id(kind: str, zone: str, starts_at: str, ends_at: str) -> str:
    return f"{kind}/{zone}/{starts_at}/{ends_at}"


def price_alerts(steps: Sequence[PriceStep], zone: str = ZONE, thresholds: Thresholds = Thresholds()) -> list[dict]:
    """NEGATIVE_PRICE and HIGH_PRICE, one per run of consecutive steps, in time order."""
    out = _runs(steps, zone, "NEGATIVE_PRICE", lambda p: p < 0, min)
    out += _runs(steps, zone, "HIGH_PRICE", lambda p: p > thresholds.high_eur_per_mwh, max)
    return sorted(out, key=lambda a: (a["starts_at"], a["alert_type"]))


def arbitrage_alert(steps: Sequence[PriceStep], battery: Battery, zone: str = ZONE,
                    thresholds: Thresholds = Thresholds()) -> dict | None:
    """ARBITRAGE_OPPORTUNITY for ``battery`` over ``steps``, or None when it earns less than
    the threshold."""
    from edge.market.plan import plan  # numpy: only where a plan is made

    if not steps:
        return None
    result = plan(steps, battery)
    if result.profit_eur < thresholds.arbitrage_min_profit_eur:
        return None
    charge = next((s for s in result.steps if s.power_kw > 0), None)
    discharge = next((s for s in result.steps if s.power_kw < 0), None)
    low = min(steps, key=lambda s: s.price)
    high = max(steps, key=lambda s: s.price)
    starts_at, ends_at = steps[0].start.isoformat(), steps[-1].end.isoformat()
    return {"alert_id": alert_id("ARBITRAGE_OPPORTUNITY", zone, starts_at, ends_at),
            "alert_type": "ARBITRAGE_OPPORTUNITY", "zone": zone, "currency": "EUR",
            "expected_profit_eur": round(result.profit_eur, 2),
            "best_charge_at": charge.start.isoformat() if charge else None,
            "best_discharge_at": discharge.start.isoformat() if discharge else None,
            "spread": round(high.price - low.price, 2), "min_price": low.price, "max_price": high.price,
            "min_price_at": low.start.isoformat(), "max_price_at": high.start.isoformat(),
            "starts_at": starts_at, "ends_at": ends_at}


def _runs(steps: Sequence[PriceStep], zone: str, kind: str, inside: Callable[[float], bool],
          pick: Callable[..., float]) -> list[dict]:
    out: list[dict] = []
    run: list[PriceStep] = []
    for step in [*steps, None]:
        if step is not None and inside(step.price) and (not run or run[-1].end == step.start):
            run.append(step)
            continue
        if run:
            starts_at, ends_at = run[0].start.isoformat(), run[-1].end.isoformat()
            out.append({"alert_id": alert_id(kind, zone, starts_at, ends_at), "alert_type": kind, "zone": zone,
                        "price": pick(s.price for s in run), "currency": "EUR",
                        "starts_at": starts_at, "ends_at": ends_at})
        run = [step] if step is not None and inside(step.price) else []
    return out
