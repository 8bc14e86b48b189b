"""When the market actor fetches what: days in Madrid time, the day-ahead publication, the
backfill window, and whether a day's steps cover it whole.

The market's days are Madrid calendar days (23 or 25 hours when the clocks change). A
round at ``now`` wants every day of the window, ``backfill_days`` back to today, and
tomorrow once its prices are published (``day_ahead_at``, Madrid time). A past day already
stored whole for every kind is not fetched again; today and tomorrow are fetched every
round, so revised prices replace the first ones.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

MADRID = ZoneInfo("Europe/Madrid")


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The day's first and last instants (UTC), Madrid midnight to midnight."""
    start = datetime.combine(day, time(), MADRID).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), MADRID).astimezone(UTC)
    return start, end


def whole(starts_and_hours: Sequence[tuple[datetime, float]], day: date) -> bool:
    """Whether the steps, (UTC start, hours) in time order, cover ``day`` without a hole."""
    start, end = day_bounds(day)
    at = start
    for step_start, hours in starts_and_hours:
        if step_start != at:
            return False
        at = step_start + timedelta(hours=hours)
    return at == end


def today(now: datetime) -> date:
    return now.astimezone(MADRID).date()


def published(now: datetime, day_ahead_at: time) -> bool:
    """Whether tomorrow's prices are out at ``now``."""
    return now.astimezone(MADRID).time() >= day_ahead_at


def wanted(now: datetime, backfill_days: int, day_ahead_at: time) -> list[date]:
    """The days a round at ``now`` keeps whole, oldest first."""
    first = today(now) - timedelta(days=backfill_days - 1)
    last = today(now) + timedelta(days=1 if published(now, day_ahead_at) else 0)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def to_fetch(now: datetime, backfill_days: int, day_ahead_at: time, kinds: Sequence[str],
             stored: Collection[tuple[str, date]], measured: Collection[str] = ("flows",)
             ) -> list[tuple[date, list[str]]]:
    """(day, kinds to fetch) for a round at ``now``: past days lacking a kind, and every kind of
    today and tomorrow, except tomorrow's ``measured`` kinds (flows happen, they are not
    published ahead)."""
    out = []
    now_day = today(now)
    for day in wanted(now, backfill_days, day_ahead_at):
        missing = [k for k in kinds if not (day > now_day and k in measured)
                   and (day >= now_day or (k, day) not in stored)]
        if missing:
            out.append((day, missing))
    return out


def next_round(now: datetime, interval_s: float, day_ahead_at: time) -> datetime:
    """The earlier of ``now + interval_s`` and the next day-ahead publication."""
    local = now.astimezone(MADRID)
    publication = datetime.combine(local.date(), day_ahead_at, MADRID)
    if publication <= local:
        publication = datetime.combine(local.date() + timedelta(days=1), day_ahead_at, MADRID)
    return min(now + timedelta(seconds=interval_s), publication.astimezone(UTC))
