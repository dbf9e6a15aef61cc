"""What a worker shows to remote control: the `WorkerView` protocol and the records
it returns. The control node (amqtask.control.node) answers Celery's inspect and
control commands from these; it never reaches into the worker otherwise.

Threading: the node runs in the monitor link's own thread and calls the view
through a *runner*, a function that runs a callable where the worker wants it and
returns its result. `direct` calls it in the link's thread (the view must then be
thread-safe); `loop_runner(loop)` runs it on the worker's asyncio loop, so the
view's methods see the worker's state without locks, as its own code does.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

from ..errors import AmqtaskError

T = TypeVar("T")
Runner = Callable[[Callable[[], T]], T]

# Celery's clients wait 1 s for replies; the worker must answer well within that.
DEFAULT_RUNNER_TIMEOUT = 0.8


class ControlRefused(AmqtaskError):
    """A command the worker will not carry out; its message is sent back as the
    reply's `error` (e.g. "unknown task", "the prefork pool cannot grow")."""


class WorkerBusy(ControlRefused):
    """The worker did not run the view call within the runner's timeout."""


@dataclass(frozen=True)
class RequestInfo:
    """A task message the worker holds: running (active), waiting for a pool slot
    (reserved) or held until its eta (scheduled)."""

    id: str
    name: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    argsrepr: str | None = None  # the message's argsrepr header, if it had one
    kwargsrepr: str | None = None
    time_start: float | None = None  # epoch seconds when it started running
    acknowledged: bool = False
    exchange: str = ""
    routing_key: str = ""
    priority: int | None = None
    redelivered: bool = False
    worker_pid: int | None = None  # the pool process running it
    eta: dt.datetime | str | None = None


@dataclass(frozen=True)
class TaskInfo:
    """A registered task and the options `registered` can show."""

    name: str
    rate_limit: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None


@dataclass(frozen=True)
class PoolInfo:
    implementation: str  # what `stats.pool.implementation` shows: prefork, threads, asyncio, solo
    max_concurrency: int
    processes: Sequence[int] = ()  # pool child pids (prefork), else this process's pid
    max_tasks_per_child: int | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None


@dataclass(frozen=True)
class WorkerCounts:
    active: int  # tasks running now
    processed: int  # tasks accepted since the worker started


class WorkerView(Protocol):
    """What a worker provides to remote control. Reads return snapshots; actions
    raise ControlRefused with a one-line reason when they cannot be done."""

    # -- reads -------------------------------------------------------------------------
    def consuming(self) -> bool:
        """True while every consumer is up (False while reconnecting or stopping)."""

    def counts(self) -> WorkerCounts:
        """For heartbeats: tasks running now and accepted since start."""

    def totals(self) -> Mapping[str, int]:
        """Tasks accepted since start, per task name (`stats.total`)."""

    def pool(self) -> PoolInfo: ...

    def prefetch_count(self) -> int:
        """The current prefetch window per consumer (0: unlimited)."""

    def queues(self) -> Sequence[str]:
        """The names of the queues being consumed now."""

    def registered(self) -> Sequence[TaskInfo]: ...

    def active(self) -> Sequence[RequestInfo]: ...

    def reserved(self) -> Sequence[RequestInfo]:
        """Received and waiting for a pool slot (not running yet)."""

    def scheduled(self) -> Sequence[RequestInfo]:
        """Held in the worker until an eta. amqtask parks delayed tasks in the broker,
        so a worker normally returns an empty list."""

    def config(self) -> Mapping[str, Any]:
        """The worker's effective options (concurrency, pool, queues, limits...)."""

    # -- actions -----------------------------------------------------------------------
    def terminate(self, ids: Sequence[str], signum: int) -> Sequence[str]:
        """Stop the running tasks among `ids` (prefork: signal their child); return
        the ids it acted on. Tasks not running are left to the revoked set."""

    def set_rate_limit(self, task_name: str, rate: str | None) -> None:
        """Change a task type's rate limit ('10/s', '5/m', '100/h'; None: no limit)."""

    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None: ...

    def add_consumer(self, queue: str, *, exchange: str | None, exchange_type: str | None,
                     routing_key: str | None) -> None: ...

    def cancel_consumer(self, queue: str) -> None: ...

    def shutdown(self) -> None:
        """Begin a warm shutdown (as SIGTERM) and return at once."""

    def pool_grow(self, n: int) -> None:
        """Add n slots (the prefetch window grows with them); refused where the pool
        cannot change size or an autoscaler owns it."""

    def pool_shrink(self, n: int) -> None: ...

    def autoscale(self, high: int | None, low: int | None) -> tuple[int, int]:
        """Change the autoscaler's max and min (None: unchanged); returns them.
        ControlRefused("Autoscale not enabled") on a worker started without --autoscale."""


def direct(fn: Callable[[], T]) -> T:
    """Run the view call in the caller's thread (the view must be thread-safe)."""
    return fn()


def loop_runner(loop: asyncio.AbstractEventLoop, timeout: float = DEFAULT_RUNNER_TIMEOUT) -> Runner:
    """Run each view call on `loop` (the worker's event loop) and wait for it at
    most `timeout` seconds; a loop that does not get to it in time raises WorkerBusy."""

    def run(fn: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the caller stopped waiting
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread, raised there
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop is closed: the worker is gone
            raise WorkerBusy("the worker's event loop is not running") from None
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise WorkerBusy(f"the worker did not answer within {timeout:g}s") from None

    return run
