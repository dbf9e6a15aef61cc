"""Tasks: a function with a name and options, callable locally or through the broker."""
from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .publisher import CallOptions
from .result import AsyncResult
from .settings import TaskOptions

if TYPE_CHECKING:
    from .app import App


class Task:
    """Created by `@app.task`. Calling it runs the function here and now;
    `delay()` / `apply_async()` publish it to be run by a worker."""

    def __init__(self, app: "App", fn: Callable[..., Any], *, name: str, bind: bool = False,
                 options: TaskOptions = TaskOptions()) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.options = options
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

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
        return AsyncResult(sent.task_id, sent.task_name, sent.destination)

    async def apply_async_async(self, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                                **options: Any) -> AsyncResult:
        sent = await self.app.publisher.send_async(self.name, args or (), kwargs, call=call_options(options),
                                                   task_options=self.options)
        return AsyncResult(sent.task_id, sent.task_name, sent.destination)


def call_options(options: Mapping[str, Any]) -> CallOptions:
    """Validate apply_async's keyword options into CallOptions."""
    known = CallOptions.__dataclass_fields__
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown apply_async option(s): {', '.join(unknown)}")
    eta = options.get("eta")
    if eta is not None and not isinstance(eta, dt.datetime):
        raise TypeError("eta must be a datetime")
    return CallOptions(**options)
