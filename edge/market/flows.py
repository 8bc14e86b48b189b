"""Cross-border flows: the physical and scheduled exchanges of one step joined per border,
the border's capacity (NTC) in the flow's direction, and how full it is.

``saturation_percentage = physical_flow_mw / ntc_mw × 100``. Above 90 % (configurable) the
interconnection is close to full and the zones' prices are likely to decouple:
``DECOUPLING_LIKELY``, one alert per run of consecutive saturated steps of one direction,
with the run's highest saturation. Without an NTC for a direction there is no saturation
(None) and no alert: a guessed capacity would raise false alerts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from edge.codecs.redata import Exchange
from edge.market.alerts import ZONE, alert_id

# Typical net transfer capacities in MW, by direction. REE publishes the real ones per
# hour; a site sets its own in [market] ntc_mw.
DEFAULT_NTC_MW = ("ES>FR=3300", "FR>ES=3300", "ES>PT=4200", "PT>ES=3500", "ES>MA=900", "MA>ES=600")


@dataclass(frozen=True, slots=True)
class Flow:
    border: str
    at_time: datetime  # UTC, the step's start
    hours: float
    flow_direction: str  # "ES>FR": the physical flow's direction
    physical_flow_mw: float  # >= 0, in flow_direction
    scheduled_flow_mw: float | None  # in flow_direction (negative: scheduled the other way)
    ntc_mw: float | None
    saturation_percentage: float | None


def parse_ntc(entries: Iterable[str]) -> dict[str, float]:
    """``("ES>FR=3300", ...)`` into ``{"ES>FR": 3300.0}``; ValueError names a bad entry."""
    out: dict[str, float] = {}
    for entry in entries:
        direction, sep, mw = entry.partition("=")
        a, arrow, b = direction.strip().partition(">")
        try:
            value = float(mw)
        except ValueError:
            value = float("nan")
        if not (sep and arrow and len(a) == 2 and len(b) == 2 and a.isupper() and b.isupper()
                and 0 < value < 100_000):
            raise ValueError(f"{entry!r} is not DIRECTION=MW with a direction like ES>FR and 0 < MW < 100000")
        out[f"{a}>{b}"] = value
    return out


def join(physical: Sequence[Exchange], scheduled: Sequence[Exchange], ntc: Mapping[str, float]) -> list[Flow]:
    """One Flow per physical step; the scheduled step of the same border and time joins it."""
    planned = {(e.border, e.start): e.net_mw for e in scheduled}
    out = []
    for e in physical:
        sign = 1 if e.net_mw > 0 else -1  # into Spain is positive
        direction = e.direction
        capacity = ntc.get(direction)
        physical_mw = abs(e.net_mw)
        sched = planned.get((e.border, e.start))
        out.append(Flow(e.border, e.start, e.hours, direction, physical_mw,
                        None if sched is None else sched * sign, capacity,
                        None if capacity is None else round(physical_mw / capacity * 100, 2)))
    return sorted(out, key=lambda f: (f.border, f.at_time))


def decoupling_alerts(flows: Sequence[Flow], threshold_percent: float = 90.0, zone: str = ZONE,
                      complete: bool = True) -> list[dict]:
    """DECOUPLING_LIKELY per run of consecutive steps of one border and direction whose
    saturation is above the threshold. With ``complete`` False (a day still running) a run
    that reaches its border's last known step may still grow: it is left for a later call,
    so its window, and so its identity, is final when it is raised."""
    out: list[dict] = []
    run: list[Flow] = []
    last = {}
    for f in flows:
        last[f.border] = max(last.get(f.border, f.at_time), f.at_time)

    def close() -> None:
        if run and (complete or run[-1].at_time != last[run[-1].border]):
            starts_at = run[0].at_time.isoformat()
            ends_at = (run[-1].at_time + timedelta(hours=run[-1].hours)).isoformat()
            kind = "DECOUPLING_LIKELY"
            out.append({"alert_id": alert_id(kind, zone, starts_at, ends_at) + f"/{run[0].flow_direction}",
                        "alert_type": kind, "zone": zone, "border": run[0].border,
                        "flow_direction": run[0].flow_direction,
                        "saturation_percentage": max(f.saturation_percentage or 0 for f in run),
                        "physical_flow_mw": max(f.physical_flow_mw for f in run),
                        "ntc_mw": run[0].ntc_mw, "starts_at": starts_at, "ends_at": ends_at})

    for f in sorted(flows, key=lambda f: (f.border, f.at_time)):
        saturated = f.saturation_percentage is not None and f.saturation_percentage > threshold_percent
        continues = (run and saturated and run[-1].border == f.border and run[-1].flow_direction == f.flow_direction
                     and run[-1].at_time + timedelta(hours=run[-1].hours) == f.at_time)
        if not continues:
            close()
            run = []
        if saturated:
            run.append(f)
    close()
    return sorted(out, key=lambda a: (a["starts_at"], a["alert_id"]))
