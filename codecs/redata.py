"""REData answers (the Spanish grid operator's public API) into price steps.

A prices answer (``/es/datos/mercados/precios-mercados-tiempo-real``, protocols.md §4)
holds one series per market in ``included[]``; the series is chosen by its ``id`` (or its
exact ``type``), never by a title substring. Values are €/MWh with the Madrid offset on
each ``datetime``; they come out as UTC steps, each with its length: 1 hour, or 15 minutes
where the series is quarter-hourly, whatever the day's length (23 and 25 hours on the
days the clocks change). What cannot be priced is refused with the field that says so: a
missing series, a value that is not a number or outside what any market clears, a
datetime without an offset, two values for one time, a hole in the series.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.codecs.errors import PayloadError

# Series of the prices answer: name -> (id, type).
SERIES = {"spot": ("600", "Precio mercado spot"), "pvpc": ("1001", "PVPC")}
# Wider than any clearing limit of the Iberian markets (day-ahead -500 to 4,000 €/MWh,
# intraday -9,999 to 9,999): a value outside is a broken answer, not a price.
PRICE_MIN, PRICE_MAX = -10_000.0, 10_000.0
STEPS = (timedelta(minutes=15), timedelta(hours=1))
MAX_VALUES = 10_000  # a year of hours; more is not an answer to one request


@dataclass(frozen=True, slots=True)
class PriceStep:
    start: datetime  # UTC
    hours: float  # the step's length: 1.0 or 0.25
    price: float  # €/MWh

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.hours)


def read_prices(body: bytes | str | dict[str, Any], series: str = "spot") -> list[PriceStep]:
    """The series' steps in time order. ``PayloadError`` names the field at fault."""
    if series not in SERIES:
        raise PayloadError(f"unknown series {series!r} (known: {', '.join(SERIES)})", field="series",
                           reason="unknown_series")
    doc = _document(body)
    errors = doc.get("errors")
    if errors:  # what the API sends with an HTTP 400
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        what = ": ".join(str(first[k]) for k in ("title", "detail") if first.get(k)) or str(errors)[:200]
        raise PayloadError(f"the API answered an error (status {first.get('status', '?')}): {what}",
                           field="errors", reason="api_error")
    included = doc.get("included")
    if not isinstance(included, list):
        raise PayloadError("the answer has no included[] list of series", field="included", reason="bad_answer")
    want_id, want_type = SERIES[series]
    found = [s for s in included if isinstance(s, dict) and (str(s.get("id")) == want_id or s.get("type") == want_type)]
    if len(found) != 1:
        have = [f"{s.get('type')}/{s.get('id')}" for s in included if isinstance(s, dict)]
        raise PayloadError(f"{'no' if not found else 'more than one'} {series} series (id {want_id}) in the "
                           f"answer; it has {have}", field="included", reason="missing_series")
    values = (found[0].get("attributes") or {}).get("values")
    where = f"included[{series}].attributes.values"
    if not isinstance(values, list) or not values:
        raise PayloadError(f"the {series} series has no values", field=where, reason="bad_answer")
    if len(values) > MAX_VALUES:
        raise PayloadError(f"the {series} series has {len(values)} values, more than {MAX_VALUES}", field=where,
                           reason="too_large")
    points = sorted((_point(v, f"{where}[{i}]") for i, v in enumerate(values)), key=lambda p: p[0])
    return _steps(points, where)


def _document(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"the answer is not JSON: {exc}", reason="bad_json") from exc
    if not isinstance(doc, dict):
        raise PayloadError(f"the answer is a JSON {type(doc).__name__}, not an object", reason="bad_answer")
    return doc


def _point(value: Any, where: str, bounds: tuple[float, float] = (PRICE_MIN, PRICE_MAX),
           what: str = "price", unit: str = "€/MWh") -> tuple[datetime, float]:
    if not isinstance(value, dict):
        raise PayloadError("a value is not an object", field=where, reason="bad_answer")
    price, text = value.get("value"), value.get("datetime")
    if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price):
        raise PayloadError(f"value {price!r} is not a number", field=f"{where}.value", reason="bad_value")
    if not bounds[0] <= price <= bounds[1]:
        raise PayloadError(f"{what} {price} {unit} is outside {bounds[0]:,.0f} to {bounds[1]:,.0f}",
                           field=f"{where}.value", reason="out_of_range")
    try:
        at = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise PayloadError(f"datetime {text!r} is not an ISO 8601 time with its offset", field=f"{where}.datetime",
                           reason="bad_time")
    return at.astimezone(UTC), float(price)


def _steps(points: list[tuple[datetime, float]], where: str) -> list[PriceStep]:
    lengths = [b[0] - a[0] for a, b in zip(points, points[1:], strict=False)]
    for (at, _), length in zip(points, lengths, strict=False):
        if length == timedelta(0):
            raise PayloadError(f"two values for {at.isoformat()}", field=where, reason="duplicate_time")
        if length not in STEPS:
            raise PayloadError(f"the next value after {at.isoformat()} comes {length} later: values are "
                               "missing (steps are 15 minutes or 1 hour)", field=where, reason="missing_values")
    last = lengths[-1] if lengths else STEPS[1]
    return [PriceStep(at, length.total_seconds() / 3600, price)
            for (at, price), length in zip(points, [*lengths, last], strict=True)]


# Cross-border exchanges (``/es/datos/intercambios/todas-fronteras-fisicos`` and
# ``-programados``): ``included[]`` has one entry per neighbour, its ``attributes.content[]``
# the flow series; the one of ``type == "saldo"`` is the net import in MWh per step
# (negative: Spain exports). Neighbours by their type or id, in Spanish or English.
BORDERS = {"francia": "FR", "france": "FR", "portugal": "PT", "marruecos": "MA", "morocco": "MA",
           "andorra": "AD"}
FLOW_MAX_MWH = 50_000.0  # every interconnection of Spain together carries under 15 GW


@dataclass(frozen=True, slots=True)
class Exchange:
    """The net exchange with one neighbour over one step: ``net_mw`` > 0 imports into Spain,
    < 0 exports (the step's energy divided by its length)."""

    border: str  # the neighbour's ISO code: FR, PT, MA, AD
    start: datetime  # UTC
    hours: float
    net_mw: float

    @property
    def direction(self) -> str:
        return f"{self.border}>ES" if self.net_mw > 0 else f"ES>{self.border}"


def read_exchanges(body: bytes | str | dict[str, Any]) -> tuple[list[Exchange], list[PayloadError]]:
    """Every neighbour's net exchange steps, and the neighbours that could not be read (each
    a ``PayloadError`` naming its field): a broken border does not cost the others. A
    broken answer as a whole raises."""
    doc = _document(body)
    if doc.get("errors"):
        read_prices(doc)  # raises the API's error as prices do
    included = doc.get("included")
    if not isinstance(included, list):
        raise PayloadError("the answer has no included[] list of borders", field="included", reason="bad_answer")
    out: list[Exchange] = []
    problems: list[PayloadError] = []
    seen: set[str] = set()
    for i, entry in enumerate(included):
        name = next((str(entry.get(k)).lower() for k in ("type", "id") if isinstance(entry, dict)
                     and str(entry.get(k)).lower() in BORDERS), None)
        if name is None:
            continue  # a total or a neighbour this runtime does not know: not an error
        border = BORDERS[name]
        where = f"included[{i}]({name})"
        try:
            if border in seen:
                raise PayloadError(f"{border} appears twice", field=where, reason="duplicate_series")
            seen.add(border)
            content = (entry.get("attributes") or {}).get("content")
            saldo = [c for c in content or () if isinstance(c, dict) and c.get("type") == "saldo"]
            if len(saldo) != 1:
                raise PayloadError(f"{'no' if not saldo else 'more than one'} saldo series for {border}",
                                   field=f"{where}.attributes.content", reason="missing_series")
            values = (saldo[0].get("attributes") or {}).get("values")
            at = f"{where}.saldo.values"
            if not isinstance(values, list) or not values or len(values) > MAX_VALUES:
                raise PayloadError(f"the saldo series of {border} has no values or too many", field=at,
                                   reason="bad_answer")
            points = sorted((_point(v, f"{at}[{j}]", (-FLOW_MAX_MWH, FLOW_MAX_MWH), "energy", "MWh")
                             for j, v in enumerate(values)), key=lambda p: p[0])
            out += [Exchange(border, s.start, s.hours, s.price / s.hours) for s in _steps(points, at)]
        except PayloadError as exc:
            problems.append(exc)
    if not out and not problems:
        raise PayloadError("no known border in the answer", field="included", reason="missing_series")
    return out, problems
