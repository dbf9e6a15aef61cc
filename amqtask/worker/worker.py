"""A worker: the handler, its pool, the RabbitMQ consumer and publish port that
feed it, and the monitor link that makes it visible (events, remote control), from
start to warm or cold shutdown."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import signals as hooks  # `signals` is run()'s parameter (OS signals)
from ..amqp.consumer import AmqpConsumer, ConsumerConfig
from ..amqp.port import AmqpPublishPort
from ..control.view import ControlRefused, loop_runner
from ..delivery import Delivery
from ..metrics import NullMetrics
from ..results import open_backend
from ..settings import MonitorSettings
from ..serializers import Codec
from ..topology.model import Exchange, Queue, Topology
from . import delays
from .handler import Handler, HandlerConfig
from .observe import MonitorObserver
from .pools import Pool, make_pool, rss_kib
from .registry import RunningRegistry
from .view import WorkerState

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("amqtask.worker")
AUTOSCALE_KEEPALIVE = 30.0  # seconds without growth before the pool shrinks, as Celery's


@dataclass(frozen=True)
class WorkerConfig:
    queues: tuple[str, ...]
    concurrency: int = 2
    pool: str = "prefork"
    prefetch_multiplier: int = 4
    optimization: str = "fair"
    hostname: str = field(default_factory=lambda: f"amqtask@{socket.gethostname()}")
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    purge: bool = False
    beat: bool = False  # run a periodic task scheduler in this worker (-B)
    autoscale: tuple[int, int] | None = None  # (max, min) pool slots; the pool starts at min

    def __post_init__(self) -> None:
        if self.autoscale is not None:  # the window is sized for the most the pool may grow to
            object.__setattr__(self, "concurrency", self.autoscale[0])

    @property
    def prefetch(self) -> int:
        """The window of unacknowledged messages per consumer at start; 0 means unlimited."""
        return self.window_for(self.concurrency)

    def window_for(self, slots: int) -> int:
        """The prefetch window for a pool of `slots` (0 with a multiplier of 0: unlimited)."""
        return slots * self.prefetch_multiplier


class Autoscaler:
    """--autoscale MAX,MIN, as Celery's: `scale()`, called each second, grows the pool
    to the work in hand (running and waiting, at most `high`) and shrinks it by one
    slot at a time, down to `low`, once no growth was needed for `keepalive` seconds.
    The bounds change at run time with `update()` (the autoscale control command)."""

    def __init__(self, pool: Pool, high: int, low: int, *, keepalive: float = AUTOSCALE_KEEPALIVE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.high = high
        self.low = low
        self.keepalive = keepalive
        self._clock = clock
        self._last_growth = clock()

    def scale(self, busy: int) -> None:
        """One look at the `busy` tasks (running and waiting for a slot)."""
        size = self.pool.concurrency
        if busy > size and size < self.high:
            self.pool.grow(min(self.high, busy) - size)
            self._last_growth = self._clock()
            log.info("autoscale: pool grown to %d", self.pool.concurrency)
        elif busy < size and size > self.low and self._clock() - self._last_growth > self.keepalive:
            self.pool.shrink(1)
            log.info("autoscale: pool shrunk to %d", self.pool.concurrency)

    def update(self, high: int | None, low: int | None) -> tuple[int, int]:
        """New bounds (None: unchanged; a min of 0 is 1, as with --autoscale: the pool
        keeps a slot), the pool brought within them at once, as Celery's update does.
        Returns (max, min); ControlRefused when min would exceed max."""
        high = self.high if high is None else high
        low = self.low if low is None else max(1, low)
        if low > high:
            raise ControlRefused(f"autoscale min ({low}) must not exceed max ({high})")
        size = self.pool.concurrency
        if size > high:
            self.pool.shrink(size - high)
        elif size < low:
            self.pool.grow(low - size)
            self._last_growth = self._clock()
        self.high, self.low = high, low
        log.info("autoscale: now max=%d min=%d", high, low)
        return high, low


def consumed_topology(topology: Topology, queues: tuple[str, ...]) -> Topology:
    """What a worker declares: its queues, what they are bound to, their dead-letter
    queues, the delay cascade each needs (quorum for a quorum queue) and the
    bindings that bring parked messages home."""
    specs = [topology.queues.get(name, Queue(name)) for name in queues]
    cascades: list[delays.Cascade] = []
    for cascade in map(delays.cascade_for, specs):
        if cascade not in cascades:
            cascades.append(cascade)
    exchanges: dict[str, Exchange] = {}
    plan_queues: dict[str, Queue] = {}
    bindings = []
    for delay in (cascade.topology() for cascade in cascades):
        exchanges.update(delay.exchanges)
        plan_queues.update(delay.queues)
        bindings.extend(delay.bindings)
    exchanges.update(topology.exchanges)
    for queue in specs:
        plan_queues[queue.name] = queue
        bindings.extend(topology.bindings_to_queue(queue.name))
        bindings.append(delays.cascade_for(queue).delivery_binding(queue.name))
        if queue.dead_letter_exchange is None:
            dead = delays.dead_letter_queue_for(queue)
            plan_queues[dead.name] = dead
    bindings.extend(b for b in topology.bindings if b.to_exchange)
    return Topology.build(exchanges.values(), plan_queues.values(), bindings)


class Worker:
    def __init__(self, app: "App", config: WorkerConfig, *, monitor: MonitorSettings | None = None,
                 metrics: NullMetrics | None = None, registry: RunningRegistry | None = None) -> None:
        self.app = app
        self.config = config
        settings = app.settings
        self.monitor_settings = monitor or settings.worker.monitor
        self.metrics = metrics or NullMetrics()
        self.monitor: Any = None  # the monitor link, once started
        codec = Codec(settings.broker.accept_content, max_bytes=settings.broker.max_message_bytes)
        slots = config.autoscale[1] if config.autoscale else config.concurrency
        self.pool: Pool = make_pool(config.pool, app, slots, codec, settings.results.serializer,
                                    max_tasks_per_child=config.max_tasks_per_child,
                                    max_memory_per_child=config.max_memory_per_child, metrics=self.metrics)
        self.autoscaler = Autoscaler(self.pool, *config.autoscale) if config.autoscale else None
        name = f"amqtask worker {config.hostname} pid {os.getpid()}"
        plan = consumed_topology(settings.topology, config.queues)
        self.port = AmqpPublishPort(settings.broker, settings.topology, plan, name=name, metrics=self.metrics)
        backend = open_backend(settings.results, settings.broker)
        # None: results only go to a client's reply_to (rpc://), if it gave one.
        self.store = backend.worker_store(publish=self.port.publish) if backend is not None else None
        self.observe = MonitorObserver(None, self.metrics)  # its events once the monitor link is up
        self.handler = Handler(app, HandlerConfig(config.hostname, config.time_limit, config.soft_time_limit),
                               self.pool, self.port, store=self.store, codec=codec, observe=self.observe)
        self.handler.registry = registry  # under a supervisor: its processes' running tasks
        # Under a supervisor, a process that runs tasks itself (not in prefork children)
        # retires where a prefork child would: past a hard time limit its thread cannot
        # be stopped, and --max-tasks-per-child / --max-memory-per-child apply to it.
        # The supervisor replaces it.
        self._retires = registry is not None and config.pool != "prefork"
        if self._retires:
            self.pool.on_hung = lambda name, task_id: self.retire(
                f"task {name}[{task_id}] passed its hard time limit and its thread cannot be stopped")
            self.handler.starts_left = config.max_tasks_per_child  # threads start tasks without the loop
        self.consumer = AmqpConsumer(
            settings.broker, plan, ConsumerConfig(config.queues, config.prefetch, config.concurrency, name, config.purge),
            self._deliver, metrics=self.metrics)
        self._inflight: set[asyncio.Task] = set()
        self._warm = asyncio.Event()
        self._cold = asyncio.Event()
        self._beat_stop = asyncio.Event()
        self._beat: asyncio.Task | None = None

    @property
    def stats(self) -> object:
        return self.handler.stats

    @property
    def consuming(self) -> bool:
        return self.consumer.consuming

    async def _deliver(self, delivery: Delivery) -> None:
        """Handle one delivery in the task the consumer runs it in (tracked, so a warm
        shutdown waits for it)."""
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        self.metrics.set_in_flight(len(self._inflight))
        try:
            await self.handler.handle(delivery)
        finally:
            self._inflight.discard(task)
            self.metrics.set_in_flight(len(self._inflight))
            if self._retires:
                self._retire_when_spent()

    def _retire_when_spent(self) -> None:
        """--max-tasks-per-child and --max-memory-per-child for this process (memory
        read every 16 tasks: it costs a system call)."""
        ran, most_tasks, most_kib = self.handler.stats.ran, self.config.max_tasks_per_child, \
            self.config.max_memory_per_child
        if most_tasks and ran >= most_tasks:
            self.retire(f"{ran} tasks run (--max-tasks-per-child {most_tasks})")
        elif most_kib and ran % 16 == 0 and rss_kib() > most_kib:
            self.retire(f"{rss_kib()} KiB resident (--max-memory-per-child {most_kib})")

    def retire(self, why: str) -> None:
        """Leave room for a new process (under a supervisor): finish what runs, then exit."""
        if self._warm.is_set():
            return
        log.warning("%s; this process finishes its running tasks and the supervisor starts a new one", why)
        self._warm.set()

    # -- life cycle ----------------------------------------------------------------
    def request_shutdown(self) -> None:
        """First call: warm shutdown. Second call: cold."""
        if self._warm.is_set():
            log.warning("cold shutdown: stopping now; unacknowledged messages return to their queues")
            self._cold.set()
        else:
            log.info("warm shutdown: finishing running tasks (signal again to stop at once)")
            self._warm.set()

    async def run(self, *, install_signals: bool = True,
                  signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
        """Consume until shut down; returns the exit status (0 warm, 1 cold). Each of
        `signals` asks for a shutdown (first warm, then cold); they are unblocked here,
        once the handler is in place, in case the caller held them back."""
        loop = asyncio.get_running_loop()
        previous = None
        if install_signals:
            for sig in signals:
                loop.add_signal_handler(sig, self.request_shutdown)
            previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signals))
        try:
            return await self._run()
        finally:
            if previous is not None:
                # Held back again as the caller had them (a supervised process does): once
                # the loop closes, its handlers are gone, and a stop signal arriving then
                # would kill the process and replace its exit status with the signal's.
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        await self.pool.start()
        try:
            await self._start_monitor(loop)
            await self.consumer.start()
        except BaseException:
            await self.pool.stop(cold=True)
            await self.port.close()
            await self._stop_monitor()
            raise
        if self.handler.registry is not None:
            self.handler.registry.mark_ready()  # from now on, ending is dying: the supervisor replaces it
        try:
            return await self._serve()
        except BaseException:
            # A bug after start must not leave a half-alive worker: stop as a cold shutdown would.
            log.exception("the worker failed; stopping")
            await self._cold_stop()
            raise

    async def _serve(self) -> int:
        hooks.worker_ready.send(sender=self)
        scaler = asyncio.create_task(self._autoscale()) if self.autoscaler else None
        if self.config.beat:
            from ..beat import run_beat

            self._beat = asyncio.create_task(run_beat(self.app, stop=self._beat_stop, name=self.config.hostname))
            self._beat.add_done_callback(self._beat_ended)
        warm = asyncio.create_task(self._warm.wait())
        cold = asyncio.create_task(self._cold.wait())
        await asyncio.wait({warm, cold}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if self._cold.is_set():
            code = await self._cold_stop()
        else:
            await self.consumer.stop_consuming()
            self.handler.stop_taking()
            drained = asyncio.create_task(self._drain())
            await asyncio.wait({drained, cold}, return_when=asyncio.FIRST_COMPLETED)
            if self._cold.is_set() and not drained.done():
                drained.cancel()
                code = await self._cold_stop()
            else:
                await self.pool.stop()
                await self._close()
        for task in (warm, cold, *([scaler] if scaler else [])):
            task.cancel()
        hooks.worker_shutdown.send(sender=self)
        log.info("worker stopped: %s", self.handler.stats)
        return code

    async def _start_monitor(self, loop: asyncio.AbstractEventLoop) -> None:
        """Events and remote control (Celery's pidbox), on a connection and thread of
        their own. NodeNameInUse when another worker has this name."""
        from ..amqp.monitor import WorkerMonitor

        settings = self.app.settings
        self.monitor = await loop.run_in_executor(None, lambda: WorkerMonitor.start(
            settings, hostname=self.config.hostname, view=WorkerState(self), runner=loop_runner(loop),
            monitor=self.monitor_settings, on_drop=self.metrics.events_dropped, started=time.time()))
        self.observe.events = self.monitor.events
        self.handler.revoked = self.monitor.revoked

    async def _stop_monitor(self) -> None:
        """Flush events and send worker-offline (after the pool has drained)."""
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            await asyncio.get_running_loop().run_in_executor(None, monitor.stop)

    async def add_queue(self, queue: str) -> None:
        """Consume one more queue (remote control's add_consumer)."""
        plan = consumed_topology(self.app.settings.topology, (*self.consumer.queues, queue))
        self.port.plan = plan
        await self.consumer.add_queue(queue, plan)

    async def fit_prefetch(self) -> None:
        """Size the prefetch window for the pool: for its slots now (after pool_grow or
        pool_shrink), or for the most the autoscaler may grow it to, as at start."""
        slots = self.autoscaler.high if self.autoscaler is not None else self.pool.concurrency
        await self.consumer.set_prefetch(self.config.window_for(slots), slots=slots)

    async def _autoscale(self) -> None:
        """Each second, the autoscaler looks at the work in hand (running and waiting)."""
        assert self.autoscaler is not None
        while True:
            await asyncio.sleep(1.0)
            self.autoscaler.scale(len(self.handler.active) + len(self.handler.waiting))

    def _beat_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None and not self._warm.is_set():
            log.error("the embedded beat stopped: %s; stopping the worker", task.exception())
            self.request_shutdown()

    async def _stop_beat(self) -> None:
        if self._beat is not None and not self._beat.done():
            self._beat_stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._beat), 15)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - it hands over on its own
                pass

    async def _drain(self) -> None:
        await self._stop_beat()
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def _cold_stop(self) -> int:
        if self._beat is not None:
            self._beat.cancel()
        self.handler.stop_taking()
        await self.pool.stop(cold=True)
        # Tasks cut short come back CANCELLED and are requeued; give their handlers a moment.
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=2)
        await self._close()
        return 1

    async def _close(self) -> None:
        await self.consumer.close()
        await self.handler.store.close()
        await self.port.close()
        await self._stop_monitor()


def run(worker: Worker, **options: Any) -> int:
    """Run `worker` to the end on a new event loop: uvloop's where it is installed
    (a default dependency on Linux and macOS; it roughly halves the event loop's own
    cost per message), asyncio's otherwise or with AMQTASK_EVENT_LOOP=asyncio."""
    if os.environ.get("AMQTASK_EVENT_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(worker.run(**options))
    return asyncio.run(worker.run(**options))
