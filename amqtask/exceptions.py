"""Celery's exception names, bound to the classes amqtask raises: code written as
`from celery.exceptions import Retry, SoftTimeLimitExceeded` works as
`from amqtask.exceptions import ...` and catches what amqtask really raises.

    TimeoutError              AsyncResult.get(timeout=...) ran out
    Retry                     raised by task.retry()
    Reject                    raise in a task to dead-letter (or requeue=True) its message
    Ignore                    raise in a task to acknowledge it and record nothing
    MaxRetriesExceededError   the last retry failed
    SoftTimeLimitExceeded     raised inside a task at its soft time limit
    TimeLimitExceeded         the task passed its hard time limit
    WorkerLostError           the process running the task died
    TaskRevokedError          the task expired (or was revoked) before it ran
    NotRegistered             app.tasks[name] for a name no task has (a KeyError)
    QueueNotFound             apply_async(queue=...) names a queue routing.yaml lacks
    OperationalError          the broker cannot be reached or refused an operation
    InvalidTaskError          a message is not a valid task message
    CeleryError               the root: every amqtask error

Each name is the class itself, not a copy (`amqtask.exceptions.Retry is
amqtask.worker.request.Retry`), so `except` clauses see one class either way.
"""
from .errors import AmqtaskError as CeleryError
from .errors import BrokerError as OperationalError
from .errors import Ignore, NotRegistered
from .errors import ProtocolError as InvalidTaskError
from .errors import RoutingError as QueueNotFound
from .results import TaskRevokedError, TimeoutError
from .worker.request import (MaxRetriesExceededError, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded,
                             WorkerLostError)

__all__ = [
    "TimeoutError", "Retry", "Reject", "Ignore", "MaxRetriesExceededError", "SoftTimeLimitExceeded",
    "TimeLimitExceeded", "WorkerLostError", "TaskRevokedError", "NotRegistered", "QueueNotFound",
    "OperationalError", "InvalidTaskError", "CeleryError",
]
