"""Cross-border flows: REData's exchanges answer read per border, physical and scheduled
joined, saturation against the NTC, and DECOUPLING_LIKELY once per saturated run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from mirror import MARKET

from edge.codecs.errors import PayloadError
from edge.codecs.redata import Exchange, read_exchanges
from edge.market.flows import DEFAULT_NTC_MW, decoupling_alerts, join, parse_ntc

PHYSICAL = (MARKET / "flows-fisicos-2026-07-26.json").read_bytes()
SCHEDULED = (MARKET / "flows-programados-2026-07-26.json").read_bytes()


def test_the_recorded_day_gives_every_border_hourly_and_one_decoupling_alert():
    physical, problems = read_exchanges(PHYSICAL)
    scheduled, _ = read_exchanges(SCHEDULED)
    assert problems == [] and len(physical) == 4 * 24
    assert {e.border for e in physical} == {"FR", "PT", "MA", "AD"}
    flows = join(physical, scheduled, parse_ntc(DEFAULT_NTC_MW))
    noon = next(f for f in flows if f.border == "FR" and f.at_time == datetime(2026, 7, 26, 12, tzinfo=UTC))
    assert (noon.flow_direction, noon.physical_flow_mw, noon.scheduled_flow_mw) == ("ES>FR", 3190.0, 3155.0)
    assert noon.ntc_mw == 3300.0 and noon.saturation_percentage == pytest.approx(3190 / 3300 * 100, abs=0.01)
    night = next(f for f in flows if f.border == "FR" and f.at_time == datetime(2026, 7, 25, 22, tzinfo=UTC))
    assert night.flow_direction == "FR>ES" and night.saturation_percentage < 50
    assert all(f.ntc_mw is None and f.saturation_percentage is None for f in flows if f.border == "AD")
    alerts = decoupling_alerts(flows)
    assert [(a["flow_direction"], a["starts_at"], a["ends_at"]) for a in alerts] == [
        ("ES>FR", "2026-07-26T09:00:00+00:00", "2026-07-26T15:00:00+00:00")]
    assert alerts[0]["saturation_percentage"] == 96.67 and alerts[0]["alert_id"].startswith("DECOUPLING_LIKELY/")


def test_a_run_still_growing_is_not_raised_until_it_ends():
    physical, _ = read_exchanges(PHYSICAL)
    flows = [f for f in join(physical, [], parse_ntc(DEFAULT_NTC_MW)) if f.at_time.hour < 13]
    assert decoupling_alerts(flows, complete=False) == []  # FR saturated up to the last known hour
    assert len(decoupling_alerts(flows, complete=True)) == 1
    later = [f for f in join(physical, [], parse_ntc(DEFAULT_NTC_MW)) if f.at_time.hour < 18]
    assert decoupling_alerts(later, complete=False) == decoupling_alerts(join(physical, [], parse_ntc(DEFAULT_NTC_MW)))


def test_a_broken_border_costs_only_itself():
    doc = json.loads(PHYSICAL)
    doc["included"][1]["attributes"]["content"][2]["attributes"]["values"][3]["value"] = 1e9  # portugal
    doc["included"][2]["attributes"]["content"] = []  # marruecos: no saldo
    exchanges, problems = read_exchanges(json.dumps(doc))
    assert {e.border for e in exchanges} == {"FR", "AD"}
    assert [(p.reason, p.field) for p in problems] == [
        ("out_of_range", "included[1](portugal).saldo.values[3].value"),
        ("missing_series", "included[2](marruecos).attributes.content")]


@pytest.mark.parametrize("body, reason", [
    (b"<html>", "bad_json"), (b'{"included": 3}', "bad_answer"),
    (b'{"included": [{"type": "total"}]}', "missing_series"),
    ((MARKET / "error-400.json").read_bytes(), "api_error")])
def test_a_broken_answer_is_refused_as_a_whole(body, reason):
    with pytest.raises(PayloadError) as caught:
        read_exchanges(body)
    assert caught.value.reason == reason


def test_ntc_entries_are_checked():
    assert parse_ntc(["ES>FR=3300"]) == {"ES>FR": 3300.0}
    for bad in ("ES-FR=3300", "ES>FR", "ES>FR=-1", "es>fr=10", "ES>FR=lots"):
        with pytest.raises(ValueError, match="DIRECTION=MW"):
            parse_ntc([bad])


def test_exchange_direction_follows_the_sign():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert Exchange("FR", at, 1.0, 10.0).direction == "FR>ES"
    assert Exchange("FR", at, 1.0, -10.0).direction == "ES>FR"
    assert at + timedelta(hours=1) > at
