"""Run one task invocation and settle its outcome. Shared by every pool (in the
prefork pool it runs inside the child), so the rules for retries, failures and
result encoding live in one place."""
from __future__ import annotations

import asyncio
import random
import time
import traceback as tb
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AmqtaskError
from ..results import FAILURE, RETRY, SUCCESS, exception_payload, result_body
from ..serializers import Codec
from .request import MaxRetriesExceededError, Reject, Request, Retry, current_request

if TYPE_CHECKING:
    from ..task import Task

REJECT = "REJECT"
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY = 180.0


@dataclass(frozen=True)
class Outcome:
    """What became of a run. `reply` is the encoded result message (or None when
    nobody waits for it); `countdown` is set for RETRY; `reason` explains a
    FAILURE or REJECT in one line (it goes into the dead letter's headers)."""

    state: str
    reply: bytes | None = None
    reply_content_type: str = "application/json"
    countdown: float | None = None
    reason: str = ""
    requeue: bool = False
    exc_payload: dict | None = None
    traceback: str | None = None
    runtime: float = 0.0
    value: Any = None  # the return value, kept only when a chain or callback needs it


def run_sync(task: "Task", request: Request, codec: Codec, serializer: str) -> Outcome:
    """Run in the calling thread; an `async def` task gets an event loop of its own."""
    if task.is_async:
        return asyncio.run(run_async(task, request, codec, serializer))
    token = current_request.set(request)
    started = time.monotonic()
    try:
        value = task.fn(task, *request.args, **request.kwargs) if task.bind else task.fn(*request.args, **request.kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure is settled, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        return settle_exception(task, request, exc, codec, serializer, time.monotonic() - started)
    finally:
        current_request.reset(token)
    return settle_success(request, value, codec, serializer, time.monotonic() - started)


async def run_async(task: "Task", request: Request, codec: Codec, serializer: str) -> Outcome:
    token = current_request.set(request)
    started = time.monotonic()
    try:
        fn_args = (task, *request.args) if task.bind else request.args
        value = await task.fn(*fn_args, **request.kwargs)
    except Exception as exc:
        return settle_exception(task, request, exc, codec, serializer, time.monotonic() - started)
    finally:
        current_request.reset(token)
    return settle_success(request, value, codec, serializer, time.monotonic() - started)


def settle_success(request: Request, value: Any, codec: Codec, serializer: str, runtime: float) -> Outcome:
    kept = value if request.headers.get("canvas") else None
    if not request.reply_to or request.headers.get("ignore_result"):
        return Outcome(SUCCESS, runtime=runtime, value=kept)
    try:
        body, ctype, _, _ = codec.encode(result_body(request.id, SUCCESS, value), serializer)
    except AmqtaskError as exc:
        error = TypeError(f"the task's return value cannot be encoded as {serializer}: {exc}")
        return failure(request, error, codec, serializer, runtime, "")
    return Outcome(SUCCESS, reply=body, reply_content_type=ctype, runtime=runtime, value=kept)


def settle_exception(task: "Task", request: Request, exc: BaseException, codec: Codec, serializer: str,
                     runtime: float) -> Outcome:
    trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, Reject):
        return Outcome(REJECT, reason=exc.reason, requeue=exc.requeue, runtime=runtime)
    retry = exc if isinstance(exc, Retry) else None
    if retry is None and task.autoretry_for and isinstance(exc, task.autoretry_for):
        retry = Retry(exc=exc, countdown=backoff(task, request.retries))
    if retry is None:
        return failure(request, exc, codec, serializer, runtime, trace)
    limit = retry.max_retries if retry.max_retries is not None else task.options.max_retries
    limit = DEFAULT_MAX_RETRIES if limit is None else limit
    cause = retry.exc
    if request.retries >= limit:
        final = cause or MaxRetriesExceededError(f"{task.name}[{request.id}] retried {limit} times already")
        return failure(request, final, codec, serializer, runtime, trace,
                       prefix=f"max retries ({limit}) exceeded: ")
    countdown = retry.countdown
    if retry.eta is not None:
        countdown = max(0.0, retry.eta.timestamp() - time.time())
    if countdown is None:
        delay = task.options.default_retry_delay
        countdown = DEFAULT_RETRY_DELAY if delay is None else delay
    payload = exception_payload(cause or retry)
    reply = None
    if request.reply_to and not request.headers.get("ignore_result"):
        reply, _, _, _ = codec.encode(result_body(request.id, RETRY, payload, trace), serializer)
    return Outcome(RETRY, reply=reply, countdown=countdown, exc_payload=payload, traceback=trace, runtime=runtime)


def failure(request: Request, exc: BaseException, codec: Codec, serializer: str, runtime: float, trace: str,
            prefix: str = "") -> Outcome:
    payload = exception_payload(exc)
    reply = None
    if request.reply_to and not request.headers.get("ignore_result"):
        reply, _, _, _ = codec.encode(result_body(request.id, FAILURE, payload, trace or None), serializer)
    reason = f"{prefix}{type(exc).__name__}: {exc}"[:500]
    return Outcome(FAILURE, reply=reply, reason=reason, exc_payload=payload, traceback=trace, runtime=runtime)


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
