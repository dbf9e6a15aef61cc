"""Run instants of schedules, with fixed clocks: intervals, one-off times, and crontabs
across the DST changes of Europe/Oslo (2026-03-29 02:00 CET -> 03:00 CEST,
2026-10-25 03:00 CEST -> 02:00 CET)."""
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from amqtask.beat.timing import latest_at_or_before, latest_between, next_after, upcoming, wall_instants
from amqtask.schedules import At, every, parse_crontab

OSLO = ZoneInfo("Europe/Oslo")
UTC = dt.timezone.utc


def z(text: str) -> dt.datetime:
    """A UTC instant from '2026-03-29T01:00'."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def oslo(instant: dt.datetime) -> str:
    return instant.astimezone(OSLO).strftime("%m-%d %H:%M %Z")


def cron(expression: str):
    return parse_crontab(expression)


# -- wall times on the UTC timeline ----------------------------------------------------

def test_a_wall_time_skipped_in_spring_runs_when_the_gap_ends():
    assert wall_instants(dt.datetime(2026, 3, 29, 2, 30), OSLO, repeat_in_fold=False) == [z("2026-03-29T01:00")]
    assert wall_instants(dt.datetime(2026, 3, 29, 2, 0), OSLO, repeat_in_fold=True) == [z("2026-03-29T01:00")]


def test_a_wall_time_repeated_in_autumn_happens_once_or_twice():
    wall = dt.datetime(2026, 10, 25, 2, 30)
    assert wall_instants(wall, OSLO, repeat_in_fold=False) == [z("2026-10-25T00:30")]
    assert wall_instants(wall, OSLO, repeat_in_fold=True) == [z("2026-10-25T00:30"), z("2026-10-25T01:30")]


def test_ordinary_wall_time_is_one_instant():
    assert wall_instants(dt.datetime(2026, 7, 1, 12, 0), OSLO, repeat_in_fold=True) == [z("2026-07-01T10:00")]


# -- crontab across DST -----------------------------------------------------------------

def test_daily_at_a_skipped_time_runs_once_at_the_end_of_the_gap():
    runs = upcoming(cron("30 2 * * *"), OSLO, z("2026-03-27T12:00"), 4)
    assert [oslo(r) for r in runs] == ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST", "03-31 02:30 CEST"]


def test_daily_at_a_repeated_time_runs_once_at_its_first_occurrence():
    runs = upcoming(cron("30 2 * * *"), OSLO, z("2026-10-24T12:00"), 3)
    assert runs == [z("2026-10-25T00:30"), z("2026-10-26T01:30"), z("2026-10-27T01:30")]
    assert [oslo(r) for r in runs] == ["10-25 02:30 CEST", "10-26 02:30 CET", "10-27 02:30 CET"]


def test_hourly_runs_every_real_hour_through_both_changes():
    autumn = upcoming(cron("0 * * * *"), OSLO, z("2026-10-24T22:30"), 5)
    assert autumn == [z("2026-10-24T23:00"), z("2026-10-25T00:00"), z("2026-10-25T01:00"), z("2026-10-25T02:00"),
                      z("2026-10-25T03:00")]
    assert [oslo(r) for r in autumn[1:3]] == ["10-25 02:00 CEST", "10-25 02:00 CET"]
    spring = upcoming(cron("0 * * * *"), OSLO, z("2026-03-28T23:30"), 3)
    assert spring == [z("2026-03-29T00:00"), z("2026-03-29T01:00"), z("2026-03-29T02:00")]
    assert [oslo(r) for r in spring] == ["03-29 01:00 CET", "03-29 03:00 CEST", "03-29 04:00 CEST"]


def test_quarter_hourly_keeps_fifteen_real_minutes_across_the_changes():
    spring = upcoming(cron("*/15 * * * *"), OSLO, z("2026-03-29T00:40"), 4)
    assert spring == [z("2026-03-29T00:45"), z("2026-03-29T01:00"), z("2026-03-29T01:15"), z("2026-03-29T01:30")]
    autumn = upcoming(cron("*/15 * * * *"), OSLO, z("2026-10-25T00:40"), 6)
    assert [b - a for a, b in zip(autumn, autumn[1:])] == [dt.timedelta(minutes=15)] * 5
    assert [oslo(r) for r in autumn[:3]] == ["10-25 02:45 CEST", "10-25 02:00 CET", "10-25 02:15 CET"]


def test_fixed_hour_after_the_fold_happens_once():
    assert upcoming(cron("0 3 * * *"), OSLO, z("2026-10-24T12:00"), 2) == [z("2026-10-25T02:00"),
                                                                          z("2026-10-26T02:00")]


def test_next_from_inside_the_fold_second_pass():
    # 02:10 CET on the autumn day, the second time the wall clock shows 02:10
    inside = z("2026-10-25T01:10")
    assert next_after(cron("30 2 * * *"), OSLO, inside) == z("2026-10-26T01:30")
    assert next_after(cron("30 * * * *"), OSLO, inside) == z("2026-10-25T01:30")


def test_latest_at_or_before_mirrors_next_after():
    inside = z("2026-10-25T01:40")  # 02:40 CET
    assert latest_at_or_before(cron("30 2 * * *"), OSLO, inside) == z("2026-10-25T00:30")
    assert latest_at_or_before(cron("30 * * * *"), OSLO, inside) == z("2026-10-25T01:30")
    assert latest_at_or_before(cron("30 2 * * *"), OSLO, z("2026-03-29T01:10")) == z("2026-03-29T01:00")
    assert latest_at_or_before(cron("30 2 * * *"), OSLO, z("2026-03-29T01:00")) == z("2026-03-29T01:00")
    assert latest_at_or_before(cron("30 2 * * *"), OSLO, z("2026-03-29T00:59")) == z("2026-03-28T01:30")


@pytest.mark.parametrize("expression", ["30 2 * * *", "0 * * * *", "*/15 * * * *", "0 3 * * *", "15 1-3 * * *"])
@pytest.mark.parametrize("start", ["2026-03-28T20:00", "2026-10-24T20:00"])
def test_forward_and_backward_walks_agree_and_never_repeat(expression, start):
    schedule = cron(expression)
    forward = upcoming(schedule, OSLO, z(start), 40)
    assert forward == sorted(set(forward))
    backward, _ = latest_between(schedule, OSLO, z(start), forward[-1], 100)
    assert backward == forward


def test_utc_crontab_is_plain():
    assert upcoming(cron("0 */3 * * *"), ZoneInfo("UTC"), z("2026-01-01T01:00"), 3) == [
        z("2026-01-01T03:00"), z("2026-01-01T06:00"), z("2026-01-01T09:00")]


# -- intervals and one-off times ---------------------------------------------------------

def test_intervals_are_aligned_to_the_epoch_so_every_beat_agrees():
    ten = every("10s")
    assert next_after(ten, OSLO, z("2026-01-01T00:00:05.300000")) == z("2026-01-01T00:00:10")
    assert next_after(ten, OSLO, z("2026-01-01T00:00:10")) == z("2026-01-01T00:00:20")
    assert latest_at_or_before(ten, OSLO, z("2026-01-01T00:00:10")) == z("2026-01-01T00:00:10")
    assert latest_at_or_before(ten, OSLO, z("2026-01-01T00:00:19.999")) == z("2026-01-01T00:00:10")


def test_latest_between_is_bounded_and_says_so():
    found, more = latest_between(every("1s"), OSLO, z("2026-01-01T00:00"), z("2026-01-02T00:00"), 5)
    assert found == [z("2026-01-01T23:59:56") + dt.timedelta(seconds=i) for i in range(5)] and more
    found, more = latest_between(every("1s"), OSLO, z("2026-01-01T00:00"), z("2026-01-01T00:00:03"), 5)
    assert len(found) == 3 and not more


def test_at_runs_once():
    once = At(z("2026-12-24T17:00"))
    assert next_after(once, OSLO, z("2026-12-24T16:00")) == z("2026-12-24T17:00")
    assert next_after(once, OSLO, z("2026-12-24T17:00")) is None
    assert upcoming(once, OSLO, z("2026-01-01T00:00"), 3) == [z("2026-12-24T17:00")]
