"""When the market actor fetches what: Madrid days (both DST days), the day-ahead
publication, the backfill window and what a round skips."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from hypothesis import given
from hypothesis import strategies as st

from edge.market.schedule import day_bounds, next_round, to_fetch, wanted, whole

KINDS = ["spot", "pvpc", "flows"]


def test_a_madrid_day_is_23_24_or_25_hours():
    for day, hours in ((date(2026, 3, 29), 23), (date(2026, 7, 26), 24), (date(2026, 10, 25), 25)):
        start, end = day_bounds(day)
        assert (end - start) == timedelta(hours=hours)
    assert day_bounds(date(2026, 7, 26))[0] == datetime(2026, 7, 25, 22, tzinfo=UTC)


def test_whole_wants_every_step_from_midnight_to_midnight_without_a_hole():
    start, _ = day_bounds(date(2026, 3, 29))
    hours = [(start + timedelta(hours=h), 1.0) for h in range(23)]
    quarters = [(start + timedelta(minutes=15 * q), 0.25) for q in range(23 * 4)]
    assert whole(hours, date(2026, 3, 29)) and whole(quarters, date(2026, 3, 29))
    assert not whole(hours[:-1], date(2026, 3, 29))  # the last hour missing
    assert not whole(hours[:5] + hours[6:], date(2026, 3, 29))  # a hole
    assert not whole(hours, date(2026, 3, 30))


def test_tomorrow_is_wanted_once_published_and_its_flows_never():
    morning = datetime(2026, 7, 26, 7, tzinfo=UTC)  # 09:00 in Madrid
    afternoon = datetime(2026, 7, 26, 12, 30, tzinfo=UTC)  # 14:30
    assert wanted(morning, 2, time(14)) == [date(2026, 7, 25), date(2026, 7, 26)]
    assert wanted(afternoon, 2, time(14))[-1] == date(2026, 7, 27)
    plan = dict(to_fetch(afternoon, 2, time(14), KINDS, set()))
    assert plan[date(2026, 7, 27)] == ["spot", "pvpc"]  # flows happen; they are not published ahead
    assert plan[date(2026, 7, 26)] == KINDS


def test_past_days_stored_whole_are_skipped_today_is_fetched_every_round():
    now = datetime(2026, 7, 26, 7, tzinfo=UTC)
    stored = {(k, date(2026, 7, d)) for k in KINDS for d in (23, 24, 25, 26)} - {("pvpc", date(2026, 7, 24))}
    assert to_fetch(now, 4, time(14), KINDS, stored) == [(date(2026, 7, 24), ["pvpc"]), (date(2026, 7, 26), KINDS)]


def test_the_next_round_is_the_interval_or_the_publication_whichever_comes_first():
    def at(day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 7, day, hour, minute, tzinfo=UTC)

    assert next_round(at(26, 11, 30), 3600, time(14)) == at(26, 12)  # 14:00 in Madrid
    assert next_round(at(26, 8), 3600, time(14)) == at(26, 9)
    assert next_round(at(26, 13), 86400 * 2, time(14)) == at(27, 12)  # after today's publication: tomorrow's


@given(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)),
       st.integers(1, 30), st.sets(st.tuples(st.sampled_from(KINDS), st.dates(date(2023, 12, 1), date(2031, 1, 2)))))
def test_a_round_never_skips_a_wanted_day_lacking_a_kind(now, backfill, stored):
    plan = dict(to_fetch(now, backfill, time(14), KINDS, stored))
    days = wanted(now, backfill, time(14))
    assert len(days) in (backfill, backfill + 1) and days == sorted(days)
    for day in days:
        for kind in KINDS:
            if kind == "flows" and day > days[backfill - 1]:
                continue
            if (kind, day) not in stored or day >= days[backfill - 1]:
                assert kind in plan.get(day, []), (day, kind)
    assert next_round(now, 3600, time(14)) - now <= timedelta(hours=1)
