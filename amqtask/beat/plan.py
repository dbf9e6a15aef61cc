"""What the leader sends at a tick: pure, with the clock passed in.

A run instant is *on time* when it came due while this leader led, and *missed*
when it came due before (every beat was down, or a failover was under way). On-time
runs are all sent. Missed runs follow the schedule's `missed` policy:
- skip: none of them;
- run_once (default): one run, for the most recent missed instant;
- run_all: every missed instant, oldest first, at most RUN_ALL_LIMIT (the most recent).
A schedule seen for the first time (or whose timing changed) starts from now:
nothing before it counts as missed.

The state of a schedule that is no longer configured is dropped at once. Should one
of that name come back, it starts afresh like any new schedule: its instants were
not due while it was gone, so none of them is sent as missed. A schedule starts no
earlier than the previous leader's last commit, so a leader whose clock is behind
cannot send again an instant the previous one sent before the schedule was dropped.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Iterable
from zoneinfo import ZoneInfo

from ..settings import ScheduleEntry
from .state import BeatState, EntryState, scheduled_task_id
from .timing import latest_between

RUN_ALL_LIMIT = 100


@dataclass(frozen=True)
class Run:
    entry: ScheduleEntry
    instant: dt.datetime
    task_id: str
    missed: bool  # came due before this leader took over


@dataclass(frozen=True)
class Plan:
    runs: tuple[Run, ...]
    state: BeatState  # the state once these runs are sent
    changed: bool  # the state differs from the one planned from
    # (schedule, missed instants not run among the last RUN_ALL_LIMIT, older ones exist too)
    skipped: tuple[tuple[str, int, bool], ...] = ()
    forgotten: tuple[str, ...] = ()  # schedules no longer configured, whose state was dropped


def plan_tick(entries: Iterable[ScheduleEntry], tz: ZoneInfo, state: BeatState, now: dt.datetime,
              leading_since: dt.datetime) -> Plan:
    runs: list[Run] = []
    skipped: list[tuple[str, int, bool]] = []
    entries = tuple(entries)
    configured = {entry.name for entry in entries}
    new_entries = {name: known for name, known in state.entries.items() if name in configured}
    start = max(now, state.updated) if state.updated else now
    for entry in entries:
        spec = entry.schedule.fingerprint(str(tz.key))
        known = state.entries.get(entry.name)
        if known is None or known.spec != spec:
            new_entries[entry.name] = EntryState(cursor=start, spec=spec)
            continue
        entry_runs, not_run = _due(entry, tz, known.cursor, now, leading_since)
        if not_run[0] or not_run[1]:
            skipped.append((entry.name, *not_run))
        cursor = max([known.cursor, *(r.instant for r in entry_runs), *_handled_until(entry, tz, known, now)])
        last_run = entry_runs[-1].instant if entry_runs else known.last_run
        new_entries[entry.name] = EntryState(cursor=cursor, spec=spec, last_run=last_run)
        runs.extend(entry_runs)
    changed = new_entries != dict(state.entries)
    forgotten = tuple(sorted(set(state.entries) - configured))
    return Plan(tuple(runs), replace(state, entries=new_entries), changed, tuple(skipped), forgotten)


def _due(entry: ScheduleEntry, tz: ZoneInfo, cursor: dt.datetime, now: dt.datetime,
         leading_since: dt.datetime) -> tuple[list[Run], tuple[int, bool]]:
    """The runs to send for one schedule, and (missed instants not run, more than that)."""
    split = min(max(cursor, leading_since), now)
    missed, more_missed = latest_between(entry.schedule, tz, cursor, split, RUN_ALL_LIMIT)
    on_time, _ = latest_between(entry.schedule, tz, split, now, RUN_ALL_LIMIT)
    if entry.missed == "skip":
        chosen: list[dt.datetime] = []
    elif entry.missed == "run_once":
        chosen = missed[-1:]
    else:
        chosen = missed
    runs = [Run(entry, i, scheduled_task_id(entry.name, i), True) for i in chosen]
    runs += [Run(entry, i, scheduled_task_id(entry.name, i), False) for i in on_time]
    return runs, (len(missed) - len(chosen), more_missed)


def _handled_until(entry: ScheduleEntry, tz: ZoneInfo, known: EntryState, now: dt.datetime) -> list[dt.datetime]:
    """The latest due instant, so that skipped instants are not considered again."""
    latest, _ = latest_between(entry.schedule, tz, known.cursor, now, 1)
    return latest
