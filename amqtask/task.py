"""Tasks: a function with a name and options, callable locally or through the broker."""
from __future__ import annotations

import datetime as dt
import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .publisher import CallOptions
from .results import AsyncResult
from .settings import TaskOptions
from .worker.request import Request, Retry, current_request

if TYPE_CHECKING:
    from .app import App


class Task:
    """Created by `@app.task`. Calling it runs the function here and now;
    `delay()` / `apply_async()` publish it to be run by a worker."""

    def __init__(self, app: "App", fn: Callable[..., Any], *, name: str, bind: bool = False,
                 options: TaskOptions = TaskOptions(), autoretry_for: tuple[type[BaseException], ...] = (),
                 retry_backoff: bool | float = False, retry_backoff_max: float = 600,
                 retry_jitter: bool = True, track_started: bool = False) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.options = options
        self.autoretry_for = tuple(autoretry_for)
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.track_started = track_started
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @property
    def request(self) -> Request:
        """The running invocation's context (id, args, retries, redelivered, ...)."""
        request = current_request.get()
        if request is None:
            return Request(id="", task=self.name)
        return request

    def retry(self, exc: BaseException | None = None, countdown: float | None = None,
              eta: dt.datetime | None = None, max_retries: int | None = None) -> Retry:
        """Ask the worker to run this task again later. Raises (use `raise self.retry(...)`
        for readability): the worker republishes the message, delayed by the broker,
        with `retries` + 1, and fails the task once max_retries is used up."""
        raise Retry(exc=exc, countdown=countdown, eta=eta, max_retries=max_retries)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    async def delay_async(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.apply_async_async(args, kwargs)

    def apply_async(self, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Publish the task. Options: exchange, routing_key, queue, priority, countdown,
        eta, expires, headers, serializer, compression, task_id, ignore_result,
        time_limit, soft_time_limit."""
        sent = self.app.publisher.send(self.name, args or (), kwargs, call=call_options(options),
                                       task_options=self.options)
        return self.app.result_handle(sent)

    async def apply_async_async(self, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                                **options: Any) -> AsyncResult:
        sent = await self.app.publisher.send_async(self.name, args or (), kwargs, call=call_options(options),
                                                   task_options=self.options)
        return self.app.result_handle(sent)


NO_CALL_OPTIONS = CallOptions()


def call_options(options: Mapping[str, Any]) -> CallOptions:
    """Validate apply_async's keyword options into CallOptions."""
    if not options:
        return NO_CALL_OPTIONS
    known = CallOptions.__dataclass_fields__
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown apply_async option(s): {', '.join(unknown)}")
    eta = options.get("eta")
    if eta is not None and not isinstance(eta, dt.datetime):
        raise TypeError("eta must be a datetime")
    return CallOptions(**options)
