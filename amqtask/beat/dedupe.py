"""How a scheduled run is marked on the wire, and the worker-side check that drops
a second copy of one.

Every message a beat sends carries:
- task id (header `id`, property `correlation_id`) = scheduled_task_id(name, instant),
  the same in every beat;
- header `x-amqtask-schedule`: the schedule's name;
- header `x-amqtask-scheduled-for`: the run instant, ISO 8601 UTC ('...Z').

A leader's handover does not send an instant twice when a beat crashes or loses its
connection (see amqtask/amqp/beat_lock.py), so a copy comes from a broker node failing
during a commit, or from outside the beats (a message republished by hand, two beat
groups given the same schedule names). A worker that wants to be sure keeps a
ScheduledRunFilter.

A run re-driven from the dead letters (`amqtask dead requeue`) keeps its id and its
schedule header but carries the re-drive header: it is an operator asking for the
run again, so it is not a copy.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

from ..deadletters import REDRIVEN

SCHEDULE_HEADER = "x-amqtask-schedule"
SCHEDULED_FOR_HEADER = "x-amqtask-scheduled-for"


def schedule_of(headers: Mapping[str, Any]) -> str | None:
    """The schedule name of a scheduled run's message, None for any other message."""
    value = headers.get(SCHEDULE_HEADER)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def is_redriven(headers: Mapping[str, Any]) -> bool:
    """Whether the message was sent again from the dead letters by an operator."""
    return headers.get(REDRIVEN) is not None


class ScheduledRunFilter:
    """Remembers the task ids of the last `capacity` scheduled runs this worker
    accepted. `admit` is True the first time an id is seen, False for a copy.
    Messages without the schedule header are always admitted and not remembered.

    Call `admit` right before running a task (after eta and expiry are handled, so a
    message parked for its eta is not counted), and only for a first attempt that is
    not a redelivery (`retries` 0, `redelivered` false): a retry republishes the same
    id, and a redelivery is the broker returning a delivery whose attempt was lost;
    neither is a copy. A re-driven run is admitted even when its id was seen: the
    operator re-ran it on purpose."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def admit(self, task_id: str, headers: Mapping[str, Any]) -> bool:
        if schedule_of(headers) is None:
            return True
        seen = task_id in self._seen
        self._remember(task_id)
        return not seen or is_redriven(headers)

    def _remember(self, task_id: str) -> None:
        self._seen[task_id] = None
        self._seen.move_to_end(task_id)
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
