"""The leader's decisions with a fixed clock: on-time runs, the missed policies, new
and changed schedules, the token's state (merge, encoding) and the worker-side filter."""
import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import pytest

from amqtask.beat.dedupe import SCHEDULE_HEADER, ScheduledRunFilter
from amqtask.beat.plan import RUN_ALL_LIMIT, plan_tick
from amqtask.beat.state import BeatState, EntryState, StateError, format_instant, scheduled_task_id
from amqtask.deadletters import REDRIVEN
from amqtask.schedules import every, parse_crontab
from amqtask.settings import ScheduleEntry

UTC = dt.timezone.utc
OSLO = ZoneInfo("Europe/Oslo")
T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def s(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def entry(name="tick", schedule=None, missed="run_once") -> ScheduleEntry:
    return ScheduleEntry(name=name, task="t.record", schedule=schedule or every("1s"), missed=missed)


def started(e: ScheduleEntry, at: dt.datetime, tz=OSLO) -> BeatState:
    """The state after a first tick at `at`: the schedule is known from then on."""
    plan = plan_tick([e], tz, BeatState(), at, at)
    assert plan.runs == () and plan.changed
    return plan.state


def test_a_new_schedule_starts_from_now_and_runs_nothing_from_before():
    e = entry()
    state = started(e, s(0.5))
    assert state.entries["tick"].cursor == s(0.5)
    plan = plan_tick([e], OSLO, state, s(1.2), s(0))
    assert [r.instant for r in plan.runs] == [s(1)] and not plan.runs[0].missed


def test_on_time_runs_are_each_sent_once_as_the_clock_advances():
    e = entry()
    state = started(e, s(0))
    sent = []
    for tick in (0.3, 1.01, 1.5, 2.0, 3.7, 3.9, 5.0):  # includes a late tick that must catch up 3.0
        plan = plan_tick([e], OSLO, state, s(tick), s(0))
        sent += [r.instant for r in plan.runs]
        state = plan.state
    assert sent == [s(1), s(2), s(3), s(4), s(5)]
    assert state.entries["tick"].last_run == s(5)


def test_an_idle_tick_changes_nothing():
    e = entry()
    state = started(e, s(0))
    plan = plan_tick([e], OSLO, state, s(0.5), s(0))
    assert plan.runs == () and not plan.changed


@pytest.mark.parametrize("missed, expected", [
    ("skip", [11, 12]),
    ("run_once", [10, 11, 12]),
    ("run_all", [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
])
def test_missed_runs_after_downtime_follow_the_policy(missed, expected):
    e = entry(missed=missed)
    state = plan_tick([e], OSLO, started(e, s(0)), s(2.1), s(0)).state  # ran 1 and 2, then every beat stopped
    new_leader_since = s(10.5)  # a beat starts again: 3..10 came due with nobody leading
    first = plan_tick([e], OSLO, state, new_leader_since, new_leader_since)
    second = plan_tick([e], OSLO, first.state, s(12.2), new_leader_since)
    runs = [*first.runs, *second.runs]
    assert [r.instant for r in runs] == [s(i) for i in expected]
    assert all(r.missed == (r.instant <= new_leader_since) for r in runs)
    skipped = sum(n for _, n, _ in first.skipped)
    assert skipped == 8 - len([i for i in expected if i <= 10])


def test_run_all_is_bounded_to_the_most_recent():
    e = entry(missed="run_all")
    state = started(e, s(0))
    since = s(10_000)
    plan = plan_tick([e], OSLO, state, since, since)
    assert len(plan.runs) == RUN_ALL_LIMIT
    assert plan.runs[-1].instant == s(10_000) and plan.runs[0].instant == s(10_000 - RUN_ALL_LIMIT + 1)
    assert plan.skipped == (("tick", 0, True),)


def test_missed_cron_runs_across_the_autumn_change():
    e = entry(schedule=parse_crontab("30 2 * * *"), missed="run_all")
    down = dt.datetime(2026, 10, 22, 12, 0, tzinfo=UTC)
    state = started(e, down)
    back = dt.datetime(2026, 10, 27, 12, 0, tzinfo=UTC)
    plan = plan_tick([e], OSLO, state, back, back)
    local = [r.instant.astimezone(OSLO).strftime("%d %H:%M %Z") for r in plan.runs]
    assert local == ["23 02:30 CEST", "24 02:30 CEST", "25 02:30 CEST", "26 02:30 CET", "27 02:30 CET"]
    once = plan_tick([entry(schedule=e.schedule, missed="run_once")], OSLO, state, back, back)
    assert [r.instant for r in once.runs] == [plan.runs[-1].instant]


def test_a_leader_ticking_through_the_spring_night_sends_each_instant_once():
    """A fixed clock stepping 7 minutes at a time from 22:00 UTC to 04:00 UTC."""
    entries = [entry("daily", parse_crontab("30 2 * * *")), entry("quarter", parse_crontab("*/15 * * * *")),
               entry("hourly", parse_crontab("0 * * * *"))]
    start = dt.datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    state = plan_tick(entries, OSLO, BeatState(), start, start).state
    sent: dict[str, list] = {e.name: [] for e in entries}
    now = start
    while now < dt.datetime(2026, 3, 29, 4, 0, tzinfo=UTC):
        now += dt.timedelta(minutes=7)
        plan = plan_tick(entries, OSLO, state, now, start)
        for run in plan.runs:
            sent[run.entry.name].append(run.instant)
        state = plan.state
    assert sent["daily"] == [dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]  # 02:30 does not exist: at 03:00 CEST
    quarter = sent["quarter"]
    assert len(quarter) == len(set(quarter)) == 24  # 22:15 .. 04:00 UTC, every 15 real minutes
    assert [b - a for a, b in zip(quarter, quarter[1:])] == [dt.timedelta(minutes=15)] * 23
    assert [i.astimezone(OSLO).hour for i in sent["hourly"]] == [0, 1, 3, 4, 5, 6]


def test_a_changed_timing_starts_afresh_but_other_options_do_not():
    e = entry()
    state = plan_tick([e], OSLO, started(e, s(0)), s(5.5), s(0)).state
    changed = entry(schedule=every("2s"))
    plan = plan_tick([changed], OSLO, state, s(100), s(0))
    assert plan.runs == () and plan.state.entries["tick"].cursor == s(100)
    retasked = ScheduleEntry(name="tick", task="t.other", schedule=every("1s"), args=(1,))
    assert [r.instant for r in plan_tick([retasked], OSLO, state, s(6.5), s(0)).runs] == [s(6)]


def test_the_state_of_a_schedule_no_longer_configured_is_dropped():
    kept, removed = entry("kept"), entry("removed")
    state = plan_tick([kept, removed], OSLO, BeatState(), s(0), s(0)).state
    plan = plan_tick([kept], OSLO, state, s(0.5), s(0))
    assert set(plan.state.entries) == {"kept"} and plan.changed and plan.forgotten == ("removed",)
    assert plan_tick([kept], OSLO, plan.state, s(0.6), s(0)).forgotten == ()


def test_a_schedule_that_comes_back_starts_afresh_without_missed_runs():
    e = entry(missed="run_all")
    state = started(e, s(0))
    state = plan_tick([], OSLO, state, s(1.5), s(0)).state  # removed for a while ...
    plan = plan_tick([e], OSLO, state, s(60.5), s(0))  # ... and back: its absence is not downtime
    assert plan.runs == () and plan.state.entries["tick"].cursor == s(60.5)
    assert [r.instant for r in plan_tick([e], OSLO, plan.state, s(61), s(0)).runs] == [s(61)]


def test_a_new_schedule_starts_no_earlier_than_the_previous_leaders_last_commit():
    """A leader whose clock is behind must not send an instant the previous leader
    may have sent (before the schedule was dropped from the token)."""
    e = entry()
    state = BeatState(seq=9, updated=s(3.2))  # the previous leader's clock: 3.2
    plan = plan_tick([e], OSLO, state, s(1.5), s(1.5))  # ours: 1.5
    assert plan.state.entries["tick"].cursor == s(3.2)
    assert [r.instant for r in plan_tick([e], OSLO, plan.state, s(4), s(1.5)).runs] == [s(4)]


def test_task_ids_are_uuid5_of_name_and_instant():
    instant = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    expected = uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "amqtask:schedule"), "tick@2026-01-01T00:00:10Z")
    assert scheduled_task_id("tick", instant) == str(expected)
    assert scheduled_task_id("tick", instant.astimezone(OSLO)) == str(expected)
    assert scheduled_task_id("tock", instant) != str(expected)
    assert format_instant(instant.replace(microsecond=5)) == "2026-01-01T00:00:10.000005Z"


def test_state_round_trips_and_merges_to_the_later_cursor():
    a = BeatState(seq=4, leader="a", entries={"x": EntryState(s(10), "every:1000", s(10)),
                                                "y": EntryState(s(3), "every:1000", None)},
                  leading_since=s(0), updated=s(10))
    assert BeatState.decode(a.encode()) == a
    b = BeatState(seq=2, leader="b", entries={"x": EntryState(s(4), "every:1000", s(4)),
                                                "y": EntryState(s(9), "every:1000", s(9)),
                                                "z": EntryState(s(1), "every:1000", None)})
    merged = a.merged(b)
    assert merged == b.merged(a)
    assert merged.seq == 4 and merged.leader == "a"
    assert merged.entries["x"].cursor == s(10) and merged.entries["y"].cursor == s(9)
    assert merged.entries["y"].last_run == s(9) and "z" in merged.entries
    genesis = BeatState()
    assert genesis.merged(a) == a.merged(genesis) == a


def test_a_spec_change_keeps_the_newer_token():
    old = BeatState(seq=1, entries={"x": EntryState(s(50), "every:1000")})
    new = BeatState(seq=2, entries={"x": EntryState(s(5), "cron:* * * * *@UTC")})
    assert old.merged(new).entries["x"] == new.entries["x"]


@pytest.mark.parametrize("body", [b"", b"garbage", b"[]", b'{"v": 2}', b'{"v": 1, "seq": "x"}',
                                  b'{"v": 1, "seq": 1, "entries": {"a": {"cursor": "yesterday", "spec": ""}}}'])
def test_garbage_is_not_a_state(body):
    with pytest.raises(StateError):
        BeatState.decode(body)


def test_worker_filter_drops_a_second_copy_of_a_scheduled_run_only():
    f = ScheduledRunFilter(capacity=2)
    headers = {SCHEDULE_HEADER: "tick"}
    assert f.admit("a", headers) and not f.admit("a", headers)
    assert f.admit("a", {}) and f.admit("a", {})  # not a scheduled run: always admitted
    assert f.admit("b", {SCHEDULE_HEADER: b"tick"}) and f.admit("c", headers)
    assert f.admit("a", headers)  # forgotten: the filter keeps the last `capacity` ids


def test_worker_filter_admits_a_redriven_run_it_has_seen_and_still_drops_a_plain_copy():
    f = ScheduledRunFilter()
    headers = {SCHEDULE_HEADER: "tick"}
    assert f.admit("a", headers)
    assert f.admit("a", {**headers, REDRIVEN: 1})  # `amqtask dead requeue`: the operator re-runs it
    assert f.admit("a", {**headers, REDRIVEN: 2})  # and again
    assert not f.admit("a", headers)  # a copy without the re-drive header is still a copy
