"""REData prices answers (fixtures/market, shaped as protocols.md §4) into UTC price steps."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.codecs.errors import PayloadError
from edge.codecs.redata import read_prices

MARKET = Path(__file__).resolve().parents[2] / "fixtures" / "market"


def answer(name: str) -> dict:
    return json.loads((MARKET / name).read_text(encoding="utf-8"))


def test_an_hourly_day_in_madrid_time_becomes_24_utc_hours_with_its_negative_hour():
    steps = read_prices((MARKET / "prices-2026-07-26-hourly.json").read_bytes())
    assert len(steps) == 24 and {s.hours for s in steps} == {1.0}
    assert steps[0].start == datetime(2026, 7, 25, 22, tzinfo=UTC)  # 00:00+02:00
    assert all(b.start == a.end for a, b in zip(steps, steps[1:], strict=False))
    negative = [s for s in steps if s.price < 0]
    assert [(s.start.hour, s.price) for s in negative] == [(12, -15.0)]  # 14:00 in Madrid


def test_a_quarter_hourly_spot_series_and_the_hourly_pvpc_of_one_answer():
    doc = answer("prices-2026-07-27-quarter-hourly.json")
    spot, pvpc = read_prices(doc, "spot"), read_prices(doc, "pvpc")
    assert len(spot) == 96 and {s.hours for s in spot} == {0.25}
    assert len(pvpc) == 24 and {s.hours for s in pvpc} == {1.0}
    assert spot[0].start == pvpc[0].start and spot[-1].end == pvpc[-1].end


@pytest.mark.parametrize(("name", "hours"), [("prices-2026-03-29-dst-23h.json", 23),
                                            ("prices-2026-10-25-dst-25h.json", 25)])
def test_both_days_the_clocks_change_have_their_length_and_no_hole_or_overlap(name, hours):
    steps = read_prices(answer(name))
    assert len(steps) == hours
    assert steps[-1].end - steps[0].start == timedelta(hours=hours)
    assert all(b.start == a.end for a, b in zip(steps, steps[1:], strict=False))


def test_the_series_is_chosen_by_id_or_exact_type_never_by_a_title_substring():
    doc = answer("prices-2026-07-26-hourly.json")
    spot = read_prices(doc)
    renamed = copy.deepcopy(doc)
    renamed["included"][1]["type"] = "Precio mercado spot (nuevo)"
    renamed["included"][1]["attributes"]["title"] = "Spot, revisado"
    assert read_prices(renamed) == spot  # id 600 still
    decoy = copy.deepcopy(doc)
    del decoy["included"][1]
    decoy["included"].append({"type": "Precio mercado spot intradiario", "id": "612",
                              "attributes": {"title": "Precio mercado spot intradiario", "values": []}})
    with pytest.raises(PayloadError, match="no spot series") as err:
        read_prices(decoy)
    assert err.value.reason == "missing_series" and "612" in str(err.value)


def _spot(doc: dict) -> list:
    return doc["included"][1]["attributes"]["values"]


@pytest.mark.parametrize(("change", "reason", "where"), [
    (lambda v: v[5].update(value=1e9), "out_of_range", "values[5].value"),
    (lambda v: v[5].update(value="95,0"), "bad_value", "values[5].value"),
    (lambda v: v[5].update(value=float("nan")), "bad_value", "values[5].value"),
    (lambda v: v[5].update(datetime="2026-07-26T05:00:00"), "bad_time", "values[5].datetime"),
    (lambda v: v[5].update(datetime="yesterday"), "bad_time", "values[5].datetime"),
    (lambda v: v.pop(7), "missing_values", "attributes.values"),
    (lambda v: v.append(dict(v[3])), "duplicate_time", "attributes.values"),
    (lambda v: v.__setitem__(2, "95"), "bad_answer", "values[2]"),
])
def test_a_broken_answer_is_refused_naming_the_value_at_fault(change, reason, where):
    doc = answer("prices-2026-07-26-hourly.json")
    change(_spot(doc))
    with pytest.raises(PayloadError) as err:
        read_prices(doc)
    assert err.value.reason == reason and err.value.field.endswith(where), err.value.describe()


def test_the_apis_400_body_an_unknown_series_and_non_json_say_what_they_are():
    with pytest.raises(PayloadError, match="API answered an error .status 400.: Parámetros incorrectos: La fecha"):
        read_prices((MARKET / "error-400.json").read_bytes())
    with pytest.raises(PayloadError, match="unknown series 'intraday'"):
        read_prices(answer("prices-2026-07-26-hourly.json"), "intraday")
    with pytest.raises(PayloadError, match="not JSON") as err:
        read_prices(b"<html>Service Unavailable</html>")
    assert err.value.reason == "bad_json"
    with pytest.raises(PayloadError, match="no included"):
        read_prices(b'{"data": {}}')


JSONISH = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=30),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                    max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSONISH, st.fixed_dictionaries({"included": JSONISH}),
                 st.fixed_dictionaries({"included": st.lists(st.fixed_dictionaries(
                     {"id": st.just("600"), "attributes": st.fixed_dictionaries({"values": JSONISH})}), max_size=2)})))
def test_whatever_the_answer_holds_it_is_steps_or_a_payload_error(doc):
    body = json.dumps(doc, allow_nan=True)
    try:
        steps = read_prices(body)
    except PayloadError:
        return
    assert all(s.start.tzinfo is UTC and s.hours in (0.25, 1.0) for s in steps)
