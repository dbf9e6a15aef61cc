"""Tasks: a function with a name and options, callable locally or through the broker."""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .context import direct_request
from .publisher import CallOptions
from .results import AsyncResult
from .settings import TaskOptions
from .worker.request import Request, Retry, current_request

if TYPE_CHECKING:
    from .app import App
    from .canvas import Signature
    from .eager import EagerResult

DEFAULT_MAX_RETRIES = 3  # Celery's Task.max_retries


class Task:
    """Created by `@app.task`. Calling it runs the function here and now;
    `delay()` / `apply_async()` publish it to be run by a worker (or run it here,
    eagerly, when the App has task_always_eager).

    Subclass it and pass `base=` to `@app.task` for Celery's hooks, called by whoever
    runs the task (see amqtask.lifecycle for when):
    `before_start(task_id, args, kwargs)`, `on_success(retval, task_id, args, kwargs)`,
    `on_retry(exc, task_id, args, kwargs, einfo)`,
    `on_failure(exc, task_id, args, kwargs, einfo)`,
    `after_return(status, retval, task_id, args, kwargs, einfo)`."""

    def __init__(self, app: "App", fn: Callable[..., Any], *, name: str, bind: bool = False,
                 options: TaskOptions = TaskOptions(), autoretry_for: tuple[type[BaseException], ...] = (),
                 retry_backoff: bool | float = False, retry_backoff_max: float = 600,
                 retry_jitter: bool = True, track_started: bool = False, unlimited_retries: bool = False) -> None:
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
        self.unlimited_retries = unlimited_retries
        self.is_async = inspect.iscoroutinefunction(fn)
        # A base class overriding __call__ wraps every run, as Celery calls it then.
        self.overrides_call = type(self).__call__ is not Task.__call__
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    # -- Celery's hooks: no-ops here, for subclasses --------------------------------
    def before_start(self, task_id: str, args: tuple, kwargs: Mapping[str, Any]) -> None:
        """Before the function runs, in the process that runs it."""

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: Mapping[str, Any]) -> None:
        """After the function returned."""

    def on_retry(self, exc: BaseException | None, task_id: str, args: tuple, kwargs: Mapping[str, Any],
                 einfo: Any) -> None:
        """After the function asked for a retry (or raised one of autoretry_for) and
        another attempt will be made."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: Mapping[str, Any],
                   einfo: Any) -> None:
        """After the function failed for good (retries used up included)."""

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple, kwargs: Mapping[str, Any],
                     einfo: Any) -> None:
        """After on_success or on_failure (not after a retry, Ignore or Reject)."""

    # -- context ---------------------------------------------------------------------
    @property
    def request(self) -> Request:
        """The running invocation's context (id, args, retries, redelivered, ...).
        Outside a worker it is Celery's: id None, called_directly true."""
        request = current_request.get()
        if request is None:
            return direct_request(self.name)
        return request

    @property
    def max_retries(self) -> int | None:
        """How many retries this task may make: None means without limit."""
        return self.retry_limit()

    def retry_limit(self, retry: Retry | None = None) -> int | None:
        """The retries allowed for this attempt: `retry(max_retries=...)`, else the
        decorator's (or base class's) max_retries, else routing.yaml's, else 3. None
        means unlimited (max_retries=None on the decorator or base class)."""
        if retry is not None and retry.max_retries is not None:
            return retry.max_retries
        if self.unlimited_retries:
            return None
        if self.options.max_retries is not None:
            return self.options.max_retries
        configured = self.app.router.options_for(self.name).max_retries
        return DEFAULT_MAX_RETRIES if configured is None else configured

    def retry(self, exc: BaseException | None = None, countdown: float | None = None,
              eta: dt.datetime | None = None, max_retries: int | None = None) -> Retry:
        """Ask the worker to run this task again later. Raises (use `raise self.retry(...)`
        for readability): the worker republishes the message, delayed by the broker,
        with `retries` + 1, and fails the task once max_retries is used up.
        Called directly (not by a worker or an eager run), it raises `exc` itself, as
        Celery does."""
        if getattr(current_request.get(), "called_directly", False) or current_request.get() is None:
            if exc is not None:
                raise exc
        raise Retry(exc=exc, countdown=countdown, eta=eta, max_retries=max_retries)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here. Called by its own run (a worker, an eager run), the
        run's request stays; called as a plain function, `self.request` says so."""
        running = current_request.get()
        if running is not None and running.task == self.name:
            return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)
        if self.is_async:
            return self._call_async(args, kwargs)
        token = current_request.set(direct_request(self.name, args, kwargs))
        try:
            return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)
        finally:
            current_request.reset(token)

    async def _call_async(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        token = current_request.set(direct_request(self.name, args, kwargs))
        try:
            return await (self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs))
        finally:
            current_request.reset(token)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def s(self, *args: Any, **kwargs: Any) -> "Signature":
        """A signature of this task: `add.s(2)` (a chain prepends the parent's result)."""
        from .canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> "Signature":
        """An immutable signature: the parent's result is not prepended."""
        return self.s(*args, **kwargs).set(immutable=True)

    def signature(self, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> "Signature":
        return self.s(*(args or ()), **(kwargs or {})).set(**options)


    # -- calling -----------------------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    async def delay_async(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.apply_async_async(args, kwargs)

    def apply_async(self, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Publish the task. Options: exchange, routing_key, queue, priority, countdown,
        eta, expires, headers, serializer, compression, task_id, ignore_result,
        time_limit, soft_time_limit; link / link_error (signatures run after it
        succeeds / fails). With task_always_eager: run it here (apply)."""
        call = call_options(options)
        if self.app.task_always_eager:
            return self.apply(args, kwargs, task_id=call.task_id)  # type: ignore[return-value]
        sent = self.app.publisher.send(self.name, args or (), kwargs, call=call, task_options=self.options)
        return self.app.result_handle(sent)

    async def apply_async_async(self, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                                **options: Any) -> AsyncResult:
        call = call_options(options)
        if self.app.task_always_eager:
            # In a thread: an eager run may start an event loop of its own for async def tasks.
            return await asyncio.to_thread(self.apply, args, kwargs, task_id=call.task_id)  # type: ignore[return-value]
        sent = await self.app.publisher.send_async(self.name, args or (), kwargs, call=call,
                                                   task_options=self.options)
        return self.app.result_handle(sent)

    def apply(self, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None, *,
              task_id: str | None = None, retries: int = 0, throw: bool | None = None,
              **options: Any) -> "EagerResult":
        """Run the task here and now, as a worker would (request, hooks, signals,
        retries at once), and return an EagerResult. `throw` (default: the App's
        task_eager_propagates) lets the task's exception out of apply itself."""
        from .eager import apply

        call_options(options)  # same options as apply_async; none changes a local run
        propagate = self.app.task_eager_propagates if throw is None else throw
        return apply(self, args or (), kwargs, task_id=task_id, retries=retries, throw=propagate)


NO_CALL_OPTIONS = CallOptions()
# Celery's canvas options, turned into headers and the body's embed by amqtask.canvas.
CANVAS_OPTIONS = frozenset({"link", "link_error", "group_id", "group_index", "shadow", "chain", "chord"})


def call_options(options: Mapping[str, Any]) -> CallOptions:
    """Validate apply_async's keyword options into CallOptions."""
    if not options:
        return NO_CALL_OPTIONS
    known = set(CallOptions.__dataclass_fields__) - {"embed"}
    if CANVAS_OPTIONS & set(options):
        unknown = sorted(set(options) - known - CANVAS_OPTIONS)
        if unknown:
            raise TypeError(f"unknown apply_async option(s): {', '.join(unknown)}")
        from .canvas import call_options as canvas_call_options

        return canvas_call_options(options)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown apply_async option(s): {', '.join(unknown)}")
    eta = options.get("eta")
    if eta is not None and not isinstance(eta, dt.datetime):
        raise TypeError("eta must be a datetime")
    return CallOptions(**options)
