"""Run a task here and now, as a worker would but without a broker: `task.apply()`,
and every `delay()` / `apply_async()` when the App has `task_always_eager`.

As in Celery: the task runs in the calling thread with `self.request.is_eager` set,
its hooks and signals fire in the worker's order (amqtask.lifecycle), a retry runs
again at once (countdowns are not waited for) until max_retries is used up, and the
result comes back as an EagerResult. With `throw` (task_eager_propagates) an
exception leaves `apply()` itself."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time
from typing import TYPE_CHECKING, Any, Generator, Mapping

from . import lifecycle
from .context import eager_request
from .errors import Ignore
from .lifecycle import IGNORED, REJECTED, ExceptionInfo
from .protocol import new_task_id
from .results import FAILURE, RETRY, SUCCESS
from .worker.request import MaxRetriesExceededError, Reject, Request, Retry, current_request

if TYPE_CHECKING:
    from .task import Task

PROPAGATE_STATES = frozenset({FAILURE, "REVOKED"})


class EagerResult:
    """A result that is already there: `get()` returns it (or raises the task's own
    exception), `state` is final, `ready()` is true."""

    def __init__(self, id: str, task_name: str, state: str, result: Any, einfo: ExceptionInfo | None = None) -> None:
        self.id = id
        self.task_name = task_name
        self.state = state
        self.result = result
        self.einfo = einfo
        self.destination = None  # never published

    task_id = property(lambda self: self.id)
    status = property(lambda self: self.state)

    @property
    def traceback(self) -> str | None:
        return self.einfo.traceback if self.einfo is not None else None

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self.task_name} {self.state}>"

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True, **_: Any) -> Any:
        """The return value; a failure raises the task's exception (propagate=True).
        Never blocks, so it is allowed inside tasks too, as in Celery."""
        if propagate and self.state in PROPAGATE_STATES:
            raise self.result
        return self.result

    wait = get

    async def get_async(self, timeout: float | None = None, propagate: bool = True, **_: Any) -> Any:
        """get() for asyncio code, as AsyncResult's: code that awaits `task.delay()`
        runs unchanged under task_always_eager."""
        return self.get(timeout, propagate)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.get_async().__await__()

    def forget(self) -> None:
        """Nothing is stored anywhere; nothing to forget."""


def apply(task: "Task", args: tuple | list = (), kwargs: Mapping[str, Any] | None = None, *,
          task_id: str | None = None, retries: int = 0, throw: bool = False) -> EagerResult:
    task_id = task_id or new_task_id()
    parent = current_request.get()
    while True:
        request = eager_request(task.name, task_id, tuple(args), dict(kwargs or {}), retries=retries, parent=parent)
        outcome = _run(task, request, throw)
        if outcome is not None:
            return outcome
        retries += 1


def _run(task: "Task", request: Request, throw: bool) -> EagerResult | None:
    """One run; None means: run again (a retry)."""
    token = current_request.set(request)
    try:
        lifecycle.started(task, request)
        began = time.monotonic()
        try:
            retval = _call(task, request)
        except Exception as exc:
            return _settle_exception(task, request, exc, throw)
        lifecycle.succeeded(task, request, retval, time.monotonic() - began, propagate=True)
        lifecycle.finished(task, request, SUCCESS, retval, propagate=True)
        return EagerResult(request.id, task.name, SUCCESS, retval)
    finally:
        current_request.reset(token)


def _settle_exception(task: "Task", request: Request, exc: Exception, throw: bool) -> EagerResult | None:
    if isinstance(exc, (Ignore, Reject)):
        state = IGNORED if isinstance(exc, Ignore) else REJECTED
        lifecycle.finished(task, request, state, exc)
        return EagerResult(request.id, task.name, state, exc)
    retry = exc if isinstance(exc, Retry) else None
    if retry is None and task.autoretry_for and isinstance(exc, task.autoretry_for):
        retry = Retry(exc=exc)
    if retry is not None:
        limit = task.retry_limit(retry)
        if limit is None or request.retries < limit:
            lifecycle.retried(task, request, retry, ExceptionInfo.of(retry))
            lifecycle.finished(task, request, RETRY, retry)
            return None
        exc = retry.exc if isinstance(retry.exc, Exception) else MaxRetriesExceededError(
            f"Can't retry {task.name}[{request.id}] args:{request.args} kwargs:{dict(request.kwargs)}")
    if throw:
        lifecycle.finished(task, request, FAILURE, exc, after_return=False)
        raise exc
    einfo = ExceptionInfo.of(exc)
    lifecycle.failed(task, request, exc, einfo)
    lifecycle.finished(task, request, FAILURE, exc)
    return EagerResult(request.id, task.name, FAILURE, exc, einfo)


def _call(task: "Task", request: Request) -> Any:
    args, kwargs = request.args, dict(request.kwargs)
    if not task.is_async:
        if type(task).__call__ is not _task_call():  # a base class wraps each run, as Celery calls it then
            return task(*args, **kwargs)
        return task.fn(task, *args, **kwargs) if task.bind else task.fn(*args, **kwargs)
    coroutine = task.fn(task, *args, **kwargs) if task.bind else task.fn(*args, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from async code: this thread's loop is busy, so the task gets a loop of its own.
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(context.run, asyncio.run, coroutine).result()


def _task_call() -> Any:
    from .task import Task

    return Task.__call__
