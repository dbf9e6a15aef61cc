"""The worker as remote control sees it (`amqtask.control.view.WorkerView`): what
Celery's inspect commands read and what its control commands change. Called on
the worker's event loop (through `loop_runner`), so it reads the handler's state
without locks."""
from __future__ import annotations

import asyncio
import datetime as dt
import signal
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..control.view import ControlRefused, PoolInfo, RequestInfo, TaskInfo, WorkerCounts
from .pools import Limits
from .ratelimit import parse_rate

if TYPE_CHECKING:
    from .handler import Job
    from .worker import Worker


class WorkerState:
    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self._tasks: set[asyncio.Task] = set()  # control actions that run on (add_consumer...)

    @property
    def _handler(self) -> Any:
        return self.worker.handler

    # -- reads -------------------------------------------------------------------------
    def consuming(self) -> bool:
        """Healthy: connected and consuming every queue it was started for (not after
        a cancel_consumer, not while reconnecting)."""
        consumer = self.worker.consumer
        return consumer.consuming and all(q in consumer.queues for q in self.worker.config.queues)

    def counts(self) -> WorkerCounts:
        return WorkerCounts(active=len(self._handler.active), processed=sum(self._handler.totals.values()))

    def totals(self) -> Mapping[str, int]:
        return dict(self._handler.totals)

    def pool(self) -> PoolInfo:
        pool, config = self.worker.pool, self.worker.config
        return PoolInfo(implementation=pool.name, max_concurrency=pool.concurrency, processes=pool.pids(),
                        max_tasks_per_child=config.max_tasks_per_child, soft_time_limit=config.soft_time_limit,
                        time_limit=config.time_limit)

    def prefetch_count(self) -> int:
        return self.worker.consumer.prefetch

    def queues(self) -> Sequence[str]:
        return list(self.worker.consumer.queues)

    def registered(self) -> Sequence[TaskInfo]:
        app, handler = self.worker.app, self._handler
        out = []
        for name, task in sorted(app.tasks.items()):
            options = app.router.effective_options(name, task.options)
            limits = handler.time_limits.get(name) or Limits()
            # Routing lives in routing.yaml, not on the task, so none is shown (as Celery's
            # registered shows only what a task itself sets).
            out.append(TaskInfo(name=name, rate_limit=handler.rate_limits.get(name, options.rate_limit),
                                time_limit=limits.hard or options.time_limit,
                                soft_time_limit=limits.soft or options.soft_time_limit))
        return out

    def active(self) -> Sequence[RequestInfo]:
        pool = self.worker.pool
        return [_info(job, acknowledged=job.acked_early, worker_pid=pool.pid_of(task_id))
                for task_id, job in self._handler.active.items()]

    def reserved(self) -> Sequence[RequestInfo]:
        return [_info(job) for job in self._handler.waiting.values()]

    def scheduled(self) -> Sequence[RequestInfo]:
        return []  # delayed tasks wait in the broker's delay queues, not in the worker

    def config(self) -> Mapping[str, Any]:
        """The worker's options under Celery's setting names (what `inspect conf` shows)."""
        config = self.worker.config
        return {"worker_pool": config.pool, "worker_concurrency": self.worker.pool.concurrency,
                "worker_queues": self.queues(), "worker_prefetch_multiplier": config.prefetch_multiplier,
                "worker_prefetch_count": self.prefetch_count(), "task_time_limit": config.time_limit,
                "task_soft_time_limit": config.soft_time_limit,
                "worker_max_tasks_per_child": config.max_tasks_per_child,
                "worker_max_memory_per_child": config.max_memory_per_child, "task_acks_late": True}

    # -- actions -----------------------------------------------------------------------
    def terminate(self, ids: Sequence[str], signum: int) -> Sequence[str]:
        stopped = []
        for task_id in ids:
            if task_id in self._handler.active and self.worker.pool.terminate(task_id, signum or signal.SIGTERM):
                self._handler.terminated.add(task_id)
                stopped.append(task_id)
        return stopped

    def set_rate_limit(self, task_name: str, rate: str | None) -> None:
        self._known(task_name)
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise ControlRefused(str(exc)) from None
        self._handler.rate_limits[task_name] = rate
        # The rate counts afresh from now on.
        self._handler.rates.forget(task_name)

    def set_time_limit(self, task_name: str, soft: float | None, hard: float | None) -> None:
        self._known(task_name)
        self._handler.time_limits[task_name] = Limits(soft=soft or None, hard=hard or None)

    def add_consumer(self, queue: str, *, exchange: str | None, exchange_type: str | None,
                     routing_key: str | None) -> None:
        if queue not in self.worker.app.settings.topology.queues:
            raise ControlRefused(f"queue {queue!r} is not declared in {self.worker.app.settings.source}")
        self._background(self.worker.add_queue(queue))

    def cancel_consumer(self, queue: str) -> None:
        if queue not in self.worker.consumer.queues:
            raise ControlRefused(f"not consuming from {queue!r}")
        self._background(self.worker.consumer.cancel_queue(queue))

    def shutdown(self) -> None:
        self.worker.request_shutdown()

    def pool_grow(self, n: int) -> None:
        self._not_autoscaled("pool_grow")
        self.worker.pool.grow(n)
        self._background(self.worker.fit_prefetch())

    def pool_shrink(self, n: int) -> None:
        self._not_autoscaled("pool_shrink")
        self.worker.pool.shrink(n)
        self._background(self.worker.fit_prefetch())

    def autoscale(self, high: int | None, low: int | None) -> tuple[int, int]:
        scaler = self.worker.autoscaler
        if scaler is None:
            raise ControlRefused("Autoscale not enabled")  # Celery's words
        bounds = scaler.update(high, low)
        self._background(self.worker.fit_prefetch())
        return bounds

    # -- helpers -------------------------------------------------------------------------
    def _not_autoscaled(self, command: str) -> None:
        """The autoscaler owns the pool's size (it would undo the change), as in Celery."""
        if self.worker.autoscaler is not None:
            raise ControlRefused(f"{command} is not supported with autoscale. Adjust autoscale range instead.")

    def _known(self, task_name: str) -> None:
        if task_name not in self.worker.app.tasks:
            raise ControlRefused("unknown task")

    def _background(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _info(job: "Job", *, acknowledged: bool = False, worker_pid: int | None = None) -> RequestInfo:
    message, delivery = job.message, job.delivery
    headers = delivery.message.headers
    eta: dt.datetime | None = message.eta
    return RequestInfo(id=message.id, name=message.task, args=message.args, kwargs=dict(message.kwargs),
                       argsrepr=headers.get("argsrepr") if isinstance(headers.get("argsrepr"), str) else None,
                       kwargsrepr=headers.get("kwargsrepr") if isinstance(headers.get("kwargsrepr"), str) else None,
                       time_start=job.started, acknowledged=acknowledged, exchange=delivery.exchange,
                       routing_key=delivery.routing_key, priority=delivery.message.priority,
                       redelivered=delivery.redelivered, worker_pid=worker_pid, eta=eta)
