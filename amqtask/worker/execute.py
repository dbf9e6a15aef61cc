"""Run one task invocation and settle its outcome. Shared by every pool (in the
prefork pool it runs inside the child), so the rules for retries, failures and
result encoding live in one place, and so do the task's hooks and signals
(`amqtask.lifecycle`, in Celery's order, where the task runs, as Celery's do)."""
from __future__ import annotations

import asyncio
import random
import time
import traceback as tb
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import lifecycle
from ..errors import AmqtaskError, Ignore
from ..lifecycle import ExceptionInfo
from ..results import FAILURE, RETRY, SUCCESS, exception_payload
from ..serializers import Codec
from .request import MaxRetriesExceededError, Reject, Request, Retry, current_request

if TYPE_CHECKING:
    from ..task import Task

REJECT = "REJECT"
IGNORED = "IGNORED"  # the task raised Ignore: acknowledged, nothing recorded
WORKER_LOST = "WORKER_LOST"  # the process running it died
CANCELLED = "CANCELLED"  # stopped by a cold shutdown: the message goes back to its queue
NOT_STARTED = "NOT_STARTED"  # no slot took it, or starting it was refused (the reason says why)
DEFAULT_RETRY_DELAY = 180.0


@dataclass(frozen=True)
class Outcome:
    """What became of a run. `value` is the return value, kept when someone wants
    it (a result backend, a reply queue, a chain or callback) and known to encode;
    `exc_payload` and `traceback` describe a failure or retry in Celery's form;
    `countdown` is set for RETRY; `reason` explains a FAILURE or REJECT in one line
    (it goes into the dead letter's headers)."""

    state: str
    countdown: float | None = None
    reason: str = ""
    requeue: bool = False
    exc_payload: dict | None = None
    traceback: str | None = None
    runtime: float = 0.0
    value: Any = None


def run_sync(task: "Task", request: Request, codec: Codec, serializer: str) -> Outcome:
    """Run in the calling thread; an `async def` task gets an event loop of its own."""
    if task.is_async:
        return asyncio.run(run_async(task, request, codec, serializer))
    token = current_request.set(request)
    try:
        lifecycle.started(task, request)
        started = time.monotonic()
        try:
            value = _call(task, request)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt from a task fail it
            return settle_exception(task, request, exc, codec, serializer, time.monotonic() - started)
        return settle_success(task, request, value, codec, serializer, time.monotonic() - started)
    finally:
        current_request.reset(token)


async def run_async(task: "Task", request: Request, codec: Codec, serializer: str) -> Outcome:
    token = current_request.set(request)
    try:
        lifecycle.started(task, request)
        started = time.monotonic()
        try:
            fn_args = (task, *request.args) if task.bind else request.args
            value = await task.fn(*fn_args, **request.kwargs)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, even CancelledError, from a task fail it
            if stopped_from_outside(exc):
                raise  # a time limit or a cold shutdown: the caller settles that
            return settle_exception(task, request, exc, codec, serializer, time.monotonic() - started)
        return settle_success(task, request, value, codec, serializer, time.monotonic() - started)
    finally:
        current_request.reset(token)


def stopped_from_outside(exc: BaseException) -> bool:
    """Whether `exc` is the cancellation of the running asyncio task (a time limit, a
    cold shutdown, a lost channel), not a CancelledError raised by the code it runs:
    only the former has a cancel request pending on the task."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def _call(task: "Task", request: Request) -> Any:
    if task.overrides_call:  # a base class that wraps each run, as Celery calls it then
        return task(*request.args, **request.kwargs)
    return task.fn(task, *request.args, **request.kwargs) if task.bind else task.fn(*request.args, **request.kwargs)


def settle_success(task: "Task", request: Request, value: Any, codec: Codec, serializer: str,
                   runtime: float) -> Outcome:
    """A value somebody wants (`result` or `canvas` in the request's headers) is
    checked here, where the task ran: one that cannot be encoded fails the task
    (as Celery's would), instead of failing later where nobody can tell the task."""
    kept = None
    if request.headers.get("result") or request.headers.get("canvas"):
        try:
            codec.encode(value, serializer)
        except AmqtaskError as exc:
            error = TypeError(f"the task's return value cannot be encoded as {serializer}: {exc}")
            return failure(task, request, error, runtime, "")
        kept = value
    lifecycle.succeeded(task, request, value, runtime)
    lifecycle.finished(task, request, SUCCESS, value)
    return Outcome(SUCCESS, runtime=runtime, value=kept)


def settle_exception(task: "Task", request: Request, exc: BaseException, codec: Codec, serializer: str,
                     runtime: float) -> Outcome:
    trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, Reject):
        lifecycle.finished(task, request, lifecycle.REJECTED, exc)
        return Outcome(REJECT, reason=exc.reason, requeue=exc.requeue, runtime=runtime)
    if isinstance(exc, Ignore):
        lifecycle.finished(task, request, lifecycle.IGNORED, exc)
        return Outcome(IGNORED, reason=str(exc) or "ignored by the task", runtime=runtime)
    retry = exc if isinstance(exc, Retry) else None
    if retry is None and task.autoretry_for and isinstance(exc, task.autoretry_for):
        retry = Retry(exc=exc, countdown=backoff(task, request.retries))
    if retry is None:
        return failure(task, request, exc, runtime, trace)
    limit = task.retry_limit(retry)  # None: unlimited (max_retries=None)
    cause = retry.exc
    if limit is not None and request.retries >= limit:
        final = cause or MaxRetriesExceededError(f"{task.name}[{request.id}] retried {limit} times already")
        return failure(task, request, final, runtime, trace, prefix=f"max retries ({limit}) exceeded: ")
    countdown = retry.countdown
    if retry.eta is not None:
        countdown = max(0.0, retry.eta.timestamp() - time.time())
    if countdown is None:
        delay = task.options.default_retry_delay
        countdown = DEFAULT_RETRY_DELAY if delay is None else delay
    lifecycle.retried(task, request, retry, ExceptionInfo.of(cause or retry))
    lifecycle.finished(task, request, RETRY, retry)
    payload = exception_payload(cause or retry)
    return Outcome(RETRY, countdown=countdown, exc_payload=payload, traceback=trace, runtime=runtime)


def failure(task: "Task | None", request: Request, exc: BaseException, runtime: float, trace: str,
            prefix: str = "") -> Outcome:
    """A final failure; the task's on_failure and after_return run (not for a
    failure found outside the task's run: a time limit, which passes no task)."""
    if task is not None:
        lifecycle.failed(task, request, exc, ExceptionInfo.of(exc))
        lifecycle.finished(task, request, FAILURE, exc)
    reason = f"{prefix}{type(exc).__name__}: {exc}"[:500]
    return Outcome(FAILURE, reason=reason, exc_payload=exception_payload(exc), traceback=trace or None,
                   runtime=runtime)


def backoff(task: "Task", retries: int) -> float:
    """Celery's exponential backoff: factor * 2**retries, capped, with full jitter."""
    if not task.retry_backoff:
        delay = task.options.default_retry_delay
        return DEFAULT_RETRY_DELAY if delay is None else delay
    factor = 1.0 if task.retry_backoff is True else float(task.retry_backoff)
    countdown = min(task.retry_backoff_max, factor * (2 ** retries))
    if task.retry_jitter:
        countdown = random.uniform(0, countdown)
    return countdown
