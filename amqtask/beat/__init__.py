"""Periodic tasks: schedules in routing.yaml or code, one leader per group elected
by RabbitMQ, each run instant sent exactly once with a deterministic task id."""
from .dedupe import SCHEDULE_HEADER, SCHEDULED_FOR_HEADER, ScheduledRunFilter
from .runner import check_schedules, run_beat
from .state import scheduled_task_id

__all__ = ["run_beat", "check_schedules", "scheduled_task_id", "ScheduledRunFilter", "SCHEDULE_HEADER",
           "SCHEDULED_FOR_HEADER"]
