"""What happens around one run of a task, in Celery's order, for whoever runs it: the
worker's handler and eager calls (task_always_eager, `task.apply()`) alike.

    started(task, request)                     task_prerun signal; task.before_start(id, args, kwargs)
    ... the task's function runs ...
    then one of:
    succeeded(task, request, retval, runtime)  task.on_success(retval, id, args, kwargs); task_success
    retried(task, request, reason, einfo)      task.on_retry(exc, id, args, kwargs, einfo); task_retry
    failed(task, request, exc, einfo)          task.on_failure(exc, id, args, kwargs, einfo); task_failure
    (nothing for Ignore and Reject)
    finished(task, request, state, retval)     task.after_return(state, retval, id, args, kwargs, None),
                                               except after RETRY, IGNORED and REJECTED; task_postrun always

`retval` for finished() is the return value, or the exception for FAILURE (as Celery
passes it). An exception raised by a hook or a receiver is logged and never changes
the task's outcome, except in eager runs (`propagate=True`) for on_success and
after_return, where Celery re-raises it to the caller.
"""
from __future__ import annotations

import logging
import traceback as tb
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import signals

if TYPE_CHECKING:
    from .task import Task
    from .worker.request import Request, Retry

log = logging.getLogger("amqtask.task")
IGNORED, REJECTED = "IGNORED", "REJECTED"
NO_AFTER_RETURN = frozenset({"RETRY", IGNORED, REJECTED})


@dataclass(frozen=True)
class ExceptionInfo:
    """Celery's `einfo`: the exception, its type, traceback object and text."""

    exception: BaseException
    type: type
    tb: TracebackType | None
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> "ExceptionInfo":
        text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(exc, type(exc), exc.__traceback__, text)

    @property
    def exc_info(self) -> tuple[type, BaseException, TracebackType | None]:
        return (self.type, self.exception, self.tb)

    def __str__(self) -> str:
        return self.traceback


def started(task: "Task", request: "Request") -> None:
    signals.task_prerun.send(sender=task, task_id=request.id, task=task, args=request.args, kwargs=request.kwargs)
    _hook(task, "before_start", request.id, request.args, request.kwargs)


def succeeded(task: "Task", request: "Request", retval: Any, runtime: float, *, propagate: bool = False) -> None:
    _hook(task, "on_success", retval, request.id, request.args, request.kwargs, propagate=propagate)
    signals.task_success.send(sender=task, result=retval, runtime=runtime)


def retried(task: "Task", request: "Request", reason: "Retry", einfo: ExceptionInfo) -> None:
    _hook(task, "on_retry", reason.exc, request.id, request.args, request.kwargs, einfo)
    signals.task_retry.send(sender=task, request=request, reason=reason, einfo=einfo)


def failed(task: "Task", request: "Request", exc: BaseException, einfo: ExceptionInfo) -> None:
    _hook(task, "on_failure", exc, request.id, request.args, request.kwargs, einfo)
    signals.task_failure.send(sender=task, task_id=request.id, exception=exc, args=request.args,
                              kwargs=request.kwargs, traceback=einfo.tb, einfo=einfo)


def finished(task: "Task", request: "Request", state: str, retval: Any, *, propagate: bool = False,
             after_return: bool = True) -> None:
    """`after_return=False`: an eager run re-raising the task's exception to its caller
    (task_eager_propagates) skips the hook, as Celery does, but not the signal."""
    try:
        if after_return and state not in NO_AFTER_RETURN:
            _hook(task, "after_return", state, retval, request.id, request.args, request.kwargs, None,
                  propagate=propagate)
    finally:
        signals.task_postrun.send(sender=task, task_id=request.id, task=task, args=request.args,
                                  kwargs=request.kwargs, retval=retval, state=state)


def _hook(task: "Task", name: str, *args: Any, propagate: bool = False) -> None:
    method = getattr(task, name, None)
    if method is None:
        return
    try:
        method(*args)
    except Exception as exc:
        if propagate:
            raise
        log.exception("task %s: %s raised %r", task.name, name, exc)
