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


def _point(value: Any, where: str) -> tuple[datetime, float]:
    if not isinstance(value, dict):
        raise PayloadError("a value is not an object", field=where, reason="bad_answer")
    price, text = value.get("value"), value.get("datetime")
    if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price):
        raise PayloadError(f"value {price!r} is not a number", field=f"{where}.value", reason="bad_value")
    if not PRICE_MIN <= price <= PRICE_MAX:
        raise PayloadError(f"price {price} €/MWh is outside {PRICE_MIN:,.0f} to {PRICE_MAX:,.0f}",
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
