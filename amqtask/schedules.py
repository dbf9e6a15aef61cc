"""When a periodic task runs: every N seconds, a crontab, or once at a time.

Schedules are frozen data; `amqtask.beat.timing` computes their run instants.
croniter checks crontab expressions (imported only when one is built).

    from amqtask import crontab
    app.add_periodic_task(10.0, add.s(16, 16), name="add-every-10s")
    app.add_periodic_task(crontab(minute=0, hour="*/3"), "projq.reports.pdf", name="reports")
"""
from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

from .errors import ScheduleError

UTC = dt.timezone.utc
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
_FIELD_RANGES = ("0-59", "0-23", "1-31", "1-12 or jan-dec", "0-6 (0 is Sunday) or sun-sat")
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MIN_PERIOD_MS = 1000
MISSED_POLICIES = ("skip", "run_once", "run_all")
# apply_async options (amqtask/task.py apply_async, publisher.CallOptions) a schedule may set.
SCHEDULE_OPTION_NAMES = (
    "exchange", "routing_key", "queue", "priority", "countdown", "expires", "headers", "serializer",
    "compression", "time_limit", "soft_time_limit", "ignore_result", "shadow",
)
# The other apply_async options, and why a schedule cannot set them.
REFUSED_OPTIONS = {
    "task_id": "the schedule derives each run's id from its name and instant (so that every beat "
               "sends the same id and workers can drop a copy)",
    "eta": "each run's eta is its instant; use 'countdown' to start runs later than that",
    "reply_to": "a beat reads no results; with 'ignore_result: false' a run's result is kept in the "
                "results backend, where any process reads it by the run's task id",
    "retries": "a scheduled run is a first attempt; 'retries' counts the re-sends of a failed one",
    "root_id": "a scheduled run starts a workflow of its own",
    "parent_id": "a scheduled run starts a workflow of its own",
}
for _canvas in ("link", "link_error", "chain", "chord", "group_id", "group_index"):
    REFUSED_OPTIONS[_canvas] = ("a schedule sends one task, not a workflow; to run a workflow on a schedule, "
                                "schedule a task that starts it")
_DURATION_OPTIONS = ("countdown", "expires", "time_limit", "soft_time_limit")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True)
class Every:
    """Runs at every multiple of the period since 1970-01-01T00:00Z, so that every
    beat computes the same instants whatever moment it started."""

    period_ms: int

    def describe(self) -> str:
        return f"every {format_duration(self.period_ms / 1000)}"

    def fingerprint(self, tz: str) -> str:
        return f"every:{self.period_ms}"


@dataclass(frozen=True)
class Crontab:
    """A five-field crontab expression (minute hour day-of-month month day-of-week),
    read as wall-clock time in the configured timezone."""

    expression: str

    @property
    def repeats_in_fold(self) -> bool:
        """When clocks go back, an hour's wall times happen twice. A schedule whose
        hour field starts with '*' runs in both (it is about elapsed time); one for a
        fixed hour runs at the first occurrence only (as Vixie cron does)."""
        fields = self.expression.split()
        return len(fields) == 5 and fields[1].startswith("*")

    def describe(self) -> str:
        return f"crontab '{self.expression}'"

    def fingerprint(self, tz: str) -> str:
        return f"cron:{self.expression}@{tz}"


@dataclass(frozen=True)
class At:
    """Runs once, at an instant (stored in UTC)."""

    when: dt.datetime

    def describe(self) -> str:
        return f"at {self.when.isoformat()}"

    def fingerprint(self, tz: str) -> str:
        return f"at:{self.when.isoformat()}"


Schedule = Union[Every, Crontab, At]


def crontab(minute: Any = "*", hour: Any = "*", day_of_week: Any = "*", day_of_month: Any = "*",
            month_of_year: Any = "*") -> Crontab:
    """Celery's `crontab(...)`: each field an int, a string in cron syntax ("*/3",
    "mon-fri", "1,15") or an iterable of ints. Raises ScheduleError naming a bad field."""
    values = {"minute": minute, "hour": hour, "day_of_month": day_of_month, "month_of_year": month_of_year,
              "day_of_week": day_of_week}
    return parse_crontab(" ".join(_cron_field(name, values[name]) for name in CRON_FIELDS))


def _cron_field(name: str, value: Any) -> str:
    if isinstance(value, bool):
        raise ScheduleError(f"crontab {name} must be an int, a string or a list of ints, not {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text or any(c.isspace() for c in text):
            raise ScheduleError(f"crontab {name} {value!r} must be one cron field without spaces")
        return text
    if isinstance(value, Iterable):
        items = list(value)
        if items and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return ",".join(str(v) for v in sorted(set(items)))
    raise ScheduleError(f"crontab {name} must be an int, a string or a list of ints, not {value!r}")


def parse_crontab(expression: str) -> Crontab:
    """A validated Crontab: exactly five fields (or an @alias such as @hourly), each
    one croniter accepts, and an expression that fires at least once."""
    from croniter import CroniterBadDateError, croniter

    text = " ".join(str(expression).split())
    if text.startswith("@"):
        if text.lower() not in CRON_ALIASES:
            raise ScheduleError(f"unknown crontab alias {text!r}; one of {', '.join(CRON_ALIASES)}")
        return Crontab(text.lower())
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"a crontab has 5 fields (minute hour day-of-month month day-of-week), "
                            f"not {len(fields)}: {text!r}")
    for i, value in enumerate(fields):
        probe = ["*"] * 5
        probe[i] = value
        if not croniter.is_valid(" ".join(probe)):
            raise ScheduleError(f"invalid {CRON_FIELDS[i].replace('_', '-')} field {value!r} in {text!r}; "
                                f"allowed: {_FIELD_RANGES[i]}, with '*', ',', '-' and '/'")
    if not croniter.is_valid(text):
        raise ScheduleError(f"invalid crontab {text!r}")
    try:
        croniter(text, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except CroniterBadDateError:
        raise ScheduleError(f"crontab {text!r} never fires (no such date)") from None
    return Crontab(text)


def parse_duration(value: Any, *, what: str = "duration") -> float:
    """Seconds from a number of seconds or a string with a unit: "250ms", "10s", "5m", "2h", "1d"."""
    if isinstance(value, bool):
        raise ScheduleError(f"{what} must be a number of seconds or a string like '10s', not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and _DURATION.match(value):
        match = _DURATION.match(value)
        assert match is not None
        seconds = float(match.group(1)) * _UNIT_MS[match.group(2)] / 1000
    else:
        raise ScheduleError(f"{what} must be a number of seconds or a string like '10s', '5m', '250ms', "
                            f"not {value!r}")
    if seconds < 0:
        raise ScheduleError(f"{what} must not be negative")
    return seconds


def schedule_option(key: str, value: Any) -> Any:
    """One apply_async option of a schedule, checked and normalised (durations to
    seconds). Raises ScheduleError, saying why for an apply_async option a schedule
    cannot take; serializer and compression names are checked against the app's
    settings when the beat starts."""
    if key in REFUSED_OPTIONS:
        raise ScheduleError(f"option {key!r} cannot be set on a schedule: {REFUSED_OPTIONS[key]}")
    if key not in SCHEDULE_OPTION_NAMES:
        raise ScheduleError(f"unknown option {key!r}; allowed: {', '.join(SCHEDULE_OPTION_NAMES)}")
    if key in _DURATION_OPTIONS:
        seconds = parse_duration(value, what=f"option {key!r}")
        if key != "countdown" and seconds == 0:
            raise ScheduleError(f"option {key!r} must be greater than 0")
        return seconds
    if key == "priority":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise ScheduleError(f"option 'priority' must be an integer from 0 to 255, not {value!r}")
        return value
    if key == "headers":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ScheduleError("option 'headers' must be a mapping with string keys")
        return dict(value)
    if key == "ignore_result":
        if not isinstance(value, bool):
            raise ScheduleError(f"option 'ignore_result' must be true or false, not {value!r}")
        return value
    if not isinstance(value, str):
        raise ScheduleError(f"option {key!r} must be a string, not {type(value).__name__}")
    return value


def unread_results_reason(options: Mapping[str, Any], results_url: str | None) -> str | None:
    """Why a schedule with these options would keep its runs' results where no one
    reads them, or None. `ignore_result: false` keeps each run's result for any process
    to read by its task id, which needs a backend read by task id: an rpc:// result goes
    back to the process that sent the task, and a beat reads none. (`amqtask beat`
    refuses to start then; `amqtask check` warns at the option's line.)"""
    if options.get("ignore_result", True) or (results_url is not None and not results_url.startswith("rpc")):
        return None
    where = "results are off" if results_url is None else "the results backend is rpc://"
    return (f"'ignore_result: false' keeps each run's result for any process to read by its task id, which "
            f"needs a redis:// or db+postgresql:// results backend; {where}, where no one would read it")


def every(value: Any) -> Every:
    """An interval: seconds (10.0), a timedelta, or "10s"; at least one second."""
    if isinstance(value, Every):
        return value
    period_ms = round(parse_duration(value, what="an interval") * 1000)
    if period_ms < MIN_PERIOD_MS:
        raise ScheduleError(f"an interval must be at least 1s, not {format_duration(period_ms / 1000)}")
    return Every(period_ms)


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA timezone `name`, or ScheduleError."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(f"unknown timezone {name!r}; use an IANA name such as 'Europe/Oslo' or 'UTC'") from None


def at(when: dt.datetime | dt.date | str, tz: str = "UTC") -> At:
    """A one-off run. A time without an offset is wall-clock time in `tz`; one that
    does not exist there (skipped by a DST change) runs when the gap ends, one that
    happens twice runs at its first occurrence."""
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ScheduleError(f"'at' must be an ISO 8601 time like 2026-12-24T18:00, not {when!r}") from None
    if isinstance(when, dt.date) and not isinstance(when, dt.datetime):
        when = dt.datetime(when.year, when.month, when.day)
    if not isinstance(when, dt.datetime):
        raise ScheduleError(f"'at' must be a date and time, not {when!r}")
    if when.tzinfo is not None:
        return At(when.astimezone(UTC))
    from .beat.timing import wall_instants

    return At(wall_instants(when, zone(tz), repeat_in_fold=False)[0])


def as_schedule(value: Any, tz: str = "UTC") -> Schedule:
    """What add_periodic_task accepts: seconds, a timedelta, an interval string such as
    "10s", a Crontab, an Every or At, or a datetime (one run)."""
    if isinstance(value, (Every, Crontab, At)):
        return value
    if isinstance(value, dt.datetime):
        return at(value, tz)
    if isinstance(value, (int, float, dt.timedelta, str)) and not isinstance(value, bool):
        return every(value)
    raise ScheduleError(f"a schedule is a number of seconds, a timedelta, crontab(...) or a datetime, "
                        f"not {type(value).__name__}")


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"
