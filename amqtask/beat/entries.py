"""Schedules built in code (`app.add_periodic_task`) and the full list a beat runs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ScheduleError
from ..schedules import MISSED_POLICIES, as_schedule, parse_duration, schedule_option
from ..settings import ScheduleEntry

if TYPE_CHECKING:
    from ..app import App


def periodic_entry(app: "App", schedule: Any, sig: Any, *, args: tuple | list | None = None,
                   kwargs: Mapping[str, Any] | None = None, name: str | None = None, missed: str = "run_once",
                   jitter: Any = 0, options: Mapping[str, Any] | None = None) -> ScheduleEntry:
    """A ScheduleEntry from add_periodic_task's arguments. `sig` is a task name, a Task,
    or a signature: any object with `task` (the name), `args`, `kwargs` and `options`;
    explicit `args`/`kwargs` replace the signature's, `options` add to its options."""
    task, sig_args, sig_kwargs, sig_options = _unpack(sig)
    call_args = tuple(sig_args if args is None else args)
    call_kwargs = dict(sig_kwargs if kwargs is None else kwargs)
    if missed not in MISSED_POLICIES:
        raise ScheduleError(f"missed must be one of {', '.join(MISSED_POLICIES)}, not {missed!r}")
    merged = {**sig_options, **(options or {})}
    checked = {key: schedule_option(key, value) for key, value in merged.items()}
    label = name or f"{task}{call_args!r}" + (f"{call_kwargs!r}" if call_kwargs else "")
    return ScheduleEntry(name=label, task=task, schedule=as_schedule(schedule, app.settings.timezone),
                         args=call_args, kwargs=call_kwargs, options=checked, missed=missed,
                         jitter=parse_duration(jitter, what="jitter"))


def _unpack(sig: Any) -> tuple[str, tuple, dict, dict]:
    if isinstance(sig, str):
        return sig, (), {}, {}
    task = getattr(sig, "task", None)
    if isinstance(task, str) and task:  # a signature (duck-typed: amqtask's, Celery's)
        return task, tuple(getattr(sig, "args", ()) or ()), dict(getattr(sig, "kwargs", {}) or {}), \
            dict(getattr(sig, "options", {}) or {})
    task_name = getattr(sig, "name", None)
    if isinstance(task_name, str) and task_name:  # a Task
        return task_name, (), {}, {}
    raise ScheduleError(f"add_periodic_task needs a task, a task name or a signature, not {type(sig).__name__}")


def schedule_entries(app: "App") -> tuple[ScheduleEntry, ...]:
    """routing.yaml's schedules, then those added in code; a name used twice is an error."""
    entries: dict[str, ScheduleEntry] = {}
    for entry in (*app.settings.schedules, *app.periodic_tasks.values()):
        if entry.name in entries:
            where = f"{app.settings.source}:{entries[entry.name].line}"
            raise ScheduleError(f"schedule {entry.name!r} is defined in {where} and again in code; rename one")
        entries[entry.name] = entry
    return tuple(entries.values())
