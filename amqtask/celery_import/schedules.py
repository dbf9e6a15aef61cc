"""Celery beat entries as routing.yaml `schedules:` entries:
`{task, every: 10s | crontab: "m h dom mon dow", args, kwargs, options}`."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

# apply_async options a beat entry may carry that amqtask's publish understands.
SCHEDULE_OPTIONS = ("queue", "exchange", "routing_key", "priority", "expires", "serializer", "compression",
                    "time_limit", "soft_time_limit", "ignore_result", "headers")


@dataclass(frozen=True)
class ScheduleDecl:
    name: str
    fields: Mapping[str, Any]  # task, every | crontab, args, kwargs, options
    notes: tuple[str, ...] = ()  # how the meaning changed, for the report and a comment


@dataclass(frozen=True)
class Untranslatable:
    name: str
    reason: str


@dataclass
class ScheduleTranslation:
    entries: list[ScheduleDecl] = field(default_factory=list)
    refused: list[Untranslatable] = field(default_factory=list)


def duration(seconds: float) -> str:
    """A duration the loader reads: the largest unit that divides it evenly."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def crontab_expression(schedule: Any) -> str:
    """Celery's crontab(minute, hour, day_of_week, day_of_month, month_of_year) as a
    standard five-field cron line, in cron's order: minute hour day-of-month month day-of-week."""
    fields = (schedule._orig_minute, schedule._orig_hour, schedule._orig_day_of_month,
              schedule._orig_month_of_year, schedule._orig_day_of_week)
    return " ".join(_cron_field(f) for f in fields)


def _cron_field(value: Any) -> str:
    if isinstance(value, (set, frozenset, list, tuple, range)):
        return ",".join(str(v) for v in sorted(value))
    return str(value).replace(" ", "")


def translate_schedules(beat_schedule: Any) -> ScheduleTranslation:
    out = ScheduleTranslation()
    if not isinstance(beat_schedule, Mapping):
        out.refused.append(Untranslatable("*", f"beat_schedule must be a mapping, not {type(beat_schedule).__name__}"))
        return out
    for name, entry in beat_schedule.items():
        result = translate_entry(str(name), entry)
        (out.entries if isinstance(result, ScheduleDecl) else out.refused).append(result)
    return out


def translate_entry(name: str, entry: Any) -> ScheduleDecl | Untranslatable:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("task"), str):
        return Untranslatable(name, "an entry needs 'task' (the task name) and 'schedule'")
    when = _when(entry.get("schedule"))
    if isinstance(when, str):
        return Untranslatable(name, when)
    fields: dict[str, Any] = {"task": entry["task"], **when}
    notes = []
    if entry.get("args"):
        fields["args"] = list(entry["args"])
    if entry.get("kwargs"):
        fields["kwargs"] = dict(entry["kwargs"])
    options = dict(entry.get("options") or {})
    dropped = sorted(set(options) - set(SCHEDULE_OPTIONS))
    if dropped:
        notes.append(f"options {', '.join(dropped)} have no amqtask equivalent and were left out")
    if options:
        fields["options"] = {k: v for k, v in options.items() if k in SCHEDULE_OPTIONS}
    if entry.get("relative"):
        notes.append("relative=True (Celery rounds the period to its resolution) is not kept")
    if "crontab" in fields:
        dom, dow = fields["crontab"].split()[2], fields["crontab"].split()[4]
        if dom != "*" and dow != "*":
            notes.append("Celery runs it only on days matching both day_of_month and day_of_week; "
                         "standard cron runs it on days matching either")
    return ScheduleDecl(name, fields, tuple(notes))


def _when(schedule: Any) -> dict[str, Any] | str:
    """{'every': ...} or {'crontab': ...}, or the reason it cannot be said."""
    from celery.schedules import crontab, schedule as every, solar

    if isinstance(schedule, bool):
        return "'schedule' must be a period or a crontab"
    if isinstance(schedule, (int, float)):
        seconds = float(schedule)
    elif isinstance(schedule, dt.timedelta):
        seconds = schedule.total_seconds()
    elif isinstance(schedule, crontab):
        return {"crontab": crontab_expression(schedule)}
    elif isinstance(schedule, solar):
        return "solar schedules (sunrise, sunset, ...) have no amqtask equivalent"
    elif isinstance(schedule, every):
        seconds = schedule.run_every.total_seconds()
    else:
        return f"a {type(schedule).__name__} schedule has no amqtask equivalent"
    if seconds <= 0:
        return f"a period of {seconds:g}s never makes sense"
    return {"every": duration(seconds)}
