"""Run instants of a schedule, as UTC datetimes, correct across DST changes.

croniter enumerates wall-clock times (naive datetimes, so it never does timezone
arithmetic itself); each wall time is then placed on the UTC timeline with zoneinfo:
- a wall time that exists once is that instant;
- a wall time skipped when clocks go forward runs at the instant the gap ends
  (02:30 on the spring day in Europe/Oslo runs at 03:00 CEST); several skipped
  times become that one instant;
- a wall time that happens twice when clocks go back runs at its first occurrence,
  or at both when the crontab's hour field starts with '*' (see Crontab.repeats_in_fold).
"""
from __future__ import annotations

import datetime as dt
from typing import Iterator
from zoneinfo import ZoneInfo

from ..schedules import At, Crontab, Every, Schedule

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
# No DST change moves clocks by more than this; instants within it of a change are
# computed the slow, careful way.
MARGIN = dt.timedelta(hours=3)
_ONE_MS = dt.timedelta(milliseconds=1)
_MAX_STEPS = 100_000  # a crontab that cannot find its next run in this many candidates never fires


def wall_instants(wall: dt.datetime, tz: ZoneInfo, *, repeat_in_fold: bool) -> list[dt.datetime]:
    """The UTC instants at which the naive wall-clock time `wall` happens in `tz`."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if _local(first, tz) == wall:  # it exists: a fold, where the wall time happens twice
        earlier, later = sorted((first, second))
        return [earlier, later] if repeat_in_fold else [earlier]
    return [_gap_end(*sorted((first, second)), tz)]


def _gap_end(before: dt.datetime, after: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The instant clocks jumped forward, between `before` and `after` (bisection to the second)."""
    offset_after = after.astimezone(tz).utcoffset()
    lo, hi = before, after
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + dt.timedelta(seconds=int((hi - lo).total_seconds() // 2))
        if mid.astimezone(tz).utcoffset() == offset_after:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _local(instant: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _near_change(tz: ZoneInfo, instant: dt.datetime) -> bool:
    return (instant - MARGIN).astimezone(tz).utcoffset() != (instant + MARGIN).astimezone(tz).utcoffset()


def next_after(schedule: Schedule, tz: ZoneInfo, instant: dt.datetime) -> dt.datetime | None:
    """The first run instant strictly after `instant`, or None when there is none."""
    if isinstance(schedule, Every):
        ms = (instant - EPOCH) // _ONE_MS
        return EPOCH + (ms // schedule.period_ms + 1) * schedule.period_ms * _ONE_MS
    if isinstance(schedule, At):
        return schedule.when if schedule.when > instant else None
    return _cron_next(schedule, tz, instant)


def latest_at_or_before(schedule: Schedule, tz: ZoneInfo, instant: dt.datetime) -> dt.datetime | None:
    """The last run instant at or before `instant`, or None when there is none."""
    if isinstance(schedule, Every):
        ms = (instant - EPOCH) // _ONE_MS
        return EPOCH + (ms // schedule.period_ms) * schedule.period_ms * _ONE_MS
    if isinstance(schedule, At):
        return schedule.when if schedule.when <= instant else None
    return _cron_prev(schedule, tz, instant)


def upcoming(schedule: Schedule, tz: ZoneInfo, instant: dt.datetime, count: int) -> list[dt.datetime]:
    """The next `count` run instants after `instant` (fewer if the schedule ends)."""
    out: list[dt.datetime] = []
    cursor: dt.datetime | None = instant
    while len(out) < count and cursor is not None:
        cursor = next_after(schedule, tz, cursor)
        if cursor is not None:
            out.append(cursor)
    return out


def latest_between(schedule: Schedule, tz: ZoneInfo, after: dt.datetime, until: dt.datetime,
                   limit: int) -> tuple[list[dt.datetime], bool]:
    """The last `limit` run instants in (after, until], oldest first, and whether
    older ones in that range were left out. Walks backwards, so a long range costs
    only `limit` steps."""
    found: list[dt.datetime] = []
    cursor = latest_at_or_before(schedule, tz, until)
    while cursor is not None and cursor > after:
        if len(found) == limit:
            return found[::-1], True
        found.append(cursor)
        cursor = latest_at_or_before(schedule, tz, cursor - _ONE_MS)
    return found[::-1], False


def _walls(expression: str, start: dt.datetime, forward: bool) -> Iterator[dt.datetime]:
    from croniter import CroniterBadDateError, croniter

    it = croniter(expression, start)
    step = it.get_next if forward else it.get_prev
    for _ in range(_MAX_STEPS):
        try:
            yield step(dt.datetime)
        except CroniterBadDateError:
            return


def _cron_next(schedule: Crontab, tz: ZoneInfo, instant: dt.datetime) -> dt.datetime | None:
    # Near a change the wall-to-instant mapping is not monotonic (a fold's second
    # pass maps earlier wall times to later instants): start early, look a while.
    start = _local(instant, tz) - (MARGIN if _near_change(tz, instant) else dt.timedelta(0))
    best: dt.datetime | None = None
    for wall in _walls(schedule.expression, start, forward=True):
        for candidate in wall_instants(wall, tz, repeat_in_fold=schedule.repeats_in_fold):
            if candidate > instant and (best is None or candidate < best):
                best = candidate
        if best is not None and (not _near_change(tz, best) or wall > _local(best, tz) + MARGIN):
            return best
    return best


def _cron_prev(schedule: Crontab, tz: ZoneInfo, instant: dt.datetime) -> dt.datetime | None:
    start = _local(instant, tz) + (MARGIN if _near_change(tz, instant) else dt.timedelta(seconds=1))
    best: dt.datetime | None = None
    for wall in _walls(schedule.expression, start, forward=False):
        for candidate in wall_instants(wall, tz, repeat_in_fold=schedule.repeats_in_fold):
            if candidate <= instant and (best is None or candidate > best):
                best = candidate
        if best is not None and (not _near_change(tz, best) or wall < _local(best, tz) - MARGIN):
            return best
    return best
