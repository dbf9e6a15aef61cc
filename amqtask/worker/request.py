"""What a running task can know about itself (`self.request`), and the exceptions
a task raises to steer its own fate."""
from __future__ import annotations

import contextvars
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import AmqtaskError


@dataclass(frozen=True)
class Request:
    id: str
    task: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    redelivered: bool = False
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    reply_to: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    hostname: str = ""
    headers: Mapping[str, Any] = field(default_factory=dict)
    is_eager: bool = False  # Celery's names: a worker's run is neither eager nor a direct call
    called_directly: bool = False

    @property
    def correlation_id(self) -> str:
        return self.id

    @property
    def delivery_info(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "routing_key": self.routing_key, "redelivered": self.redelivered,
                "queue": self.queue}


# One per running task: threads and asyncio tasks each see their own.
current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar("amqtask_request", default=None)


class Retry(AmqtaskError):
    """Raised by `task.retry()`: publish the task again later, this run is not a failure."""

    def __init__(self, exc: BaseException | None = None, countdown: float | None = None,
                 eta: dt.datetime | None = None, max_retries: int | None = None) -> None:
        self.exc = exc
        self.countdown = countdown
        self.eta = eta
        self.max_retries = max_retries
        super().__init__(f"retry in {countdown:g}s" if countdown is not None else "retry")


class MaxRetriesExceededError(AmqtaskError):
    """`task.retry()` was called once more than max_retries allows."""


class SoftTimeLimitExceeded(AmqtaskError):
    """Raised inside a task when its soft time limit passes: clean up and return."""


class TimeLimitExceeded(AmqtaskError):
    """The task ran past its hard time limit and was stopped."""


class WorkerLostError(AmqtaskError):
    """The process running the task died (killed, crashed) before it finished."""


class Reject(AmqtaskError):
    """Raised by a task to dead-letter its message (`requeue=True` puts it back instead)."""

    def __init__(self, reason: str = "rejected by the task", requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason)
