"""An in-memory broker for testing YOUR tasks without RabbitMQ. For tests only.

    from amqtask.testing import TestBroker

    def test_add_goes_to_web_tasks():
        with TestBroker(app) as broker:
            result = add.delay(2, 3)
            assert broker.queue_names_of(result) == ["web_tasks"]
            broker.run_all()
            assert result.get() == 5

Messages are routed with the same topology model as RabbitMQ would route them
(routing.yaml's exchanges, bindings, routes) and encoded in the real wire format.
`run_all()` hands them to the worker's own handler, so a test sees what a worker
does: eta and countdown, expiry, retries, rate limits, dead letters with their
reasons, results. Results live in memory, whatever backend routing.yaml names
(nothing connects to it); groups and chords work as with that backend, and a chord
is refused where it would be (rpc://, no backend). Time is virtual: when only delayed messages are left, the
broker's clock jumps to the next one that is due (`broker.now`), so a retry in an
hour runs at once and an expired task is revoked. Tasks run one at a time in the
calling thread, without time limits. Delivery guarantees (acks, redelivery,
reconnects) need the real broker.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import math
import threading
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any, Callable

from .delivery import Delivery, Settle
from .errors import UnroutableError
from .protocol import TaskMessage, WireMessage, decode_task, utcnow
from .publisher import Publisher
from .results import READY_STATES, SUCCESS, TimeoutError, open_backend
from .results.base import ChordPart, ChordReady, ResultBackend, ResultStore
from .results.meta import ResultMeta, result_body
from .serializers import Codec
from .worker.execute import Outcome, run_async, run_sync
from .worker.handler import REASON_HEADER, Handler, HandlerConfig
from .worker.pools import JobStart, Limits, Pool, begin, not_started
from .worker.request import Request

if TYPE_CHECKING:
    from .app import App
    from .results import AsyncResult
    from .task import Task

class _MemoryResults(ResultBackend):
    """The result backend, in memory: one store that the client reads (AsyncResult,
    GroupResult) and the worker's handler writes through `worker_store()`, the same
    ResultStore interface a worker uses. Chord parts are counted as a shared backend
    counts them; chords are accepted only when the configured backend could count
    them (redis://, db+postgresql://), as they would be in production."""

    url = "memory://"

    def __init__(self, *, supports_chords: bool) -> None:
        self.supports_chords = supports_chords
        self.results: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, list[str]] = {}
        self.chord_sizes: dict[str, int] = {}
        self.chord_parts: dict[str, dict[str, tuple[float, ChordPart]]] = defaultdict(dict)
        self.chord_holders: dict[str, str] = {}  # the task that completed the chord
        self.chords_done: set[str] = set()

    def latest(self, task_id: str) -> dict[str, Any] | None:
        return self.results.get(task_id)

    def wait(self, task_id: str, timeout: float | None, *, interval: float = 0.5) -> dict[str, Any]:
        # Tasks run only in run_all(): waiting here would wait forever.
        payload = self.results.get(task_id)
        if payload is None or payload.get("status") not in READY_STATES:
            raise TimeoutError(f"task {task_id} has not run: call broker.run_all() first")
        return payload

    def forget(self, task_id: str) -> None:
        self.results.pop(task_id, None)

    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        self.groups[group_id] = list(task_ids)

    def restore_group(self, group_id: str) -> list[str] | None:
        return self.groups.get(group_id)

    def delete_group(self, group_id: str) -> None:
        self.groups.pop(group_id, None)

    def set_chord_size(self, group_id: str, size: int) -> None:
        super().set_chord_size(group_id, size)
        self.chord_sizes[group_id] = size

    def worker_store(self, *, publish: Any = None) -> ResultStore:
        return _MemoryStore(self)


class _MemoryStore(ResultStore):
    """The worker's side of `_MemoryResults`."""

    def __init__(self, results: _MemoryResults) -> None:
        self.results = results
        self.supports_chords = results.supports_chords

    async def store(self, meta: ResultMeta) -> None:
        stored = self.results.results.get(meta.task_id)
        if stored is not None and stored.get("status") == SUCCESS:
            return  # a second run does not replace the first one's result
        self.results.results[meta.task_id] = result_body(meta.task_id, meta.status, meta.result, meta.traceback)

    async def chord_part_return(self, group_id: str, task_id: str, index: int | None, state: str, result: Any,
                                chord_size: int | None) -> ChordReady | None:
        if not self.supports_chords:
            return await super().chord_part_return(group_id, task_id, index, state, result, chord_size)
        memory = self.results
        if group_id in memory.chords_done:
            return None
        parts = memory.chord_parts[group_id]
        parts.setdefault(task_id, (math.inf if index is None else index, ChordPart(task_id, state, result)))
        size = chord_size if chord_size is not None else memory.chord_sizes.get(group_id)
        if size is None or len(parts) < size or memory.chord_holders.setdefault(group_id, task_id) != task_id:
            return None
        ordered = tuple(part for _, part in sorted(parts.values(), key=lambda entry: entry[0]))
        return ChordReady(group_id, ordered, token=task_id)

    async def chord_complete(self, ready: ChordReady) -> None:
        memory = self.results
        memory.chords_done.add(ready.group_id)
        memory.chord_parts.pop(ready.group_id, None)
        memory.chord_holders.pop(ready.group_id, None)


def _counts_chords(app: "App") -> bool:
    """Whether the configured result backend can count chords (nothing connects)."""
    backend = open_backend(app.settings.results, app.settings.broker)
    if backend is None:
        return False
    try:
        return backend.supports_chords
    finally:
        backend.close()


class _MemoryTransport:
    """The publisher's transport: routes into the broker's queues."""

    def __init__(self, broker: "TestBroker") -> None:
        self.broker = broker

    def publish(self, exchange: str, routing_key: str, wire: WireMessage, *, mandatory: bool = True) -> None:
        self.broker._route(exchange, routing_key, wire, mandatory=mandatory)

    def close(self) -> None:
        pass


class _MemoryAsyncTransport:
    """The publisher's asyncio transport (`delay_async`): the same routing."""

    def __init__(self, broker: "TestBroker") -> None:
        self.broker = broker

    async def publish(self, exchange: str, routing_key: str, wire: WireMessage, *, mandatory: bool = True) -> None:
        self.broker._route(exchange, routing_key, wire, mandatory=mandatory)

    async def close(self) -> None:
        pass


class _MemoryPort:
    """The handler's publish port: the same routing, parking on the virtual clock."""

    def __init__(self, broker: "TestBroker") -> None:
        self.broker = broker

    async def publish(self, exchange: str, routing_key: str, message: WireMessage, *,
                      mandatory: bool = True) -> None:
        self.broker._route(exchange, routing_key, message, mandatory=mandatory)

    async def park(self, queue: str, message: WireMessage, delay: float) -> None:
        self.broker._park(queue, message, delay)

    async def dead_letter(self, queue: str, message: WireMessage, *, routing_key: str = "") -> None:
        self.broker.dead[queue].append(message)


class _InlinePool(Pool):
    """Runs each task in the handler's thread, one at a time, without time limits."""

    name = "inline"

    def __init__(self, app: "App", codec: Codec, serializer: str) -> None:
        super().__init__(app, 1, codec, serializer)
        self.runs = 0

    async def run(self, task: "Task", request: Request, limits: Limits, start: JobStart | None = None) -> Outcome:
        reason = await begin(start)
        if reason is not None:
            return not_started(reason)
        self.runs += 1
        if task.is_async:
            return await run_async(task, request, self.codec, self.serializer)
        return run_sync(task, request, self.codec, self.serializer)


class TestBroker:
    __test__ = False  # not a pytest test class

    def __init__(self, app: "App", *, now: dt.datetime | None = None) -> None:
        self.app = app
        self.now = now or utcnow()
        self.queues: dict[str, deque[tuple[WireMessage, str, str, bool]]] = defaultdict(deque)
        self.dead: dict[str, list[WireMessage]] = defaultdict(list)
        self.codec = Codec(app.settings.broker.accept_content)
        self._delayed: list[tuple[dt.datetime, int, str, WireMessage]] = []
        self._sequence = itertools.count()
        self._results = _MemoryResults(supports_chords=_counts_chords(app))
        self._saved: Publisher | None = None

    def __enter__(self) -> "TestBroker":
        self._saved = self.app._publisher
        self.app._publisher = Publisher(self.app.settings, self.app.router,
                                        transport=_MemoryTransport(self),  # type: ignore[arg-type]
                                        results=self._results,
                                        async_transport=_MemoryAsyncTransport(self))  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: object) -> None:
        self.app._publisher = self._saved

    # -- looking -----------------------------------------------------------------
    def messages(self, queue: str) -> list[TaskMessage]:
        """The task messages waiting in `queue`, decoded."""
        return [decode_task(entry[0], self.codec) for entry in self.queues.get(queue, ())]

    def queue_names_of(self, result: "AsyncResult") -> list[str]:
        return sorted(q for q, entries in self.queues.items() if any(e[0].correlation_id == result.id for e in entries))

    def dead_letters(self, queue: str) -> list[tuple[TaskMessage | WireMessage, str]]:
        """What the worker dead-lettered from `queue`: (the message, decoded when it
        can be, and the reason)."""
        out: list[tuple[TaskMessage | WireMessage, str]] = []
        for wire in self.dead.get(queue, ()):
            try:
                message: TaskMessage | WireMessage = decode_task(wire, self.codec)
            except Exception:  # noqa: BLE001 - undecodable is exactly why some were dead-lettered
                message = wire
            out.append((message, str(wire.headers.get(REASON_HEADER, ""))))
        return out

    @property
    def delayed(self) -> list[tuple[dt.datetime, str, TaskMessage]]:
        """Parked messages: (when they are due, their queue, the message)."""
        return [(due, queue, decode_task(wire, self.codec)) for due, _, queue, wire in sorted(self._delayed)]

    # -- running -----------------------------------------------------------------
    def run_all(self, max_runs: int = 1000) -> int:
        """Run every queued task, and what they lead to (retries, countdowns, chain
        steps), until nothing is left; returns how many task runs there were. The
        clock jumps ahead to each delayed message. A task that keeps scheduling work
        stops the loop after `max_runs` runs with RuntimeError."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run_all_async(max_runs))
        # Called from async code: run on a loop of our own in a helper thread.
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["runs"] = asyncio.run(self.run_all_async(max_runs))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=run, name="amqtask-testbroker")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return int(box["runs"])

    async def run_all_async(self, max_runs: int = 1000) -> int:
        """`run_all()` for async tests."""
        settings = self.app.settings
        pool = _InlinePool(self.app, self.codec, settings.results.serializer)
        handler = Handler(self.app, HandlerConfig("amqtask-testing@localhost"), pool, _MemoryPort(self),
                          store=self._results.worker_store(), codec=self.codec, now=lambda: self.now,
                          clock=lambda: self.now.timestamp())
        while True:
            if pool.runs > max_runs:
                raise RuntimeError(f"more than {max_runs} task runs: a task keeps scheduling work (a retry loop?)")
            entry = self._next()
            if entry is None:
                return pool.runs
            queue, (wire, exchange, routing_key, redelivered) = entry
            await handler.handle(Delivery(wire, queue, self._settler(queue, wire, exchange, routing_key),
                                          exchange=exchange, routing_key=routing_key, redelivered=redelivered))

    def advance(self, seconds: float) -> None:
        """Move the clock forward; delayed messages that fall due join their queues."""
        self.now += dt.timedelta(seconds=seconds)
        self._release_due()

    # -- the broker's side ----------------------------------------------------------
    def _next(self) -> tuple[str, tuple[WireMessage, str, str, bool]] | None:
        for queue, entries in self.queues.items():
            if entries:
                return queue, entries.popleft()
        if not self._delayed:
            return None
        self.now = max(self.now, self._delayed[0][0])
        self._release_due()
        return self._next()

    def _release_due(self) -> None:
        while self._delayed and self._delayed[0][0] <= self.now:
            _, _, queue, wire = heapq.heappop(self._delayed)
            self.queues[queue].append((wire, "", queue, False))

    def _settler(self, queue: str, wire: WireMessage, exchange: str, routing_key: str) -> Callable[[Settle], bool]:
        def settle(outcome: Settle) -> bool:
            if outcome is Settle.REQUEUE:  # back at the head, as RabbitMQ requeues
                self.queues[queue].appendleft((wire, exchange, routing_key, True))
            elif outcome is Settle.REJECT:
                self.dead[queue].append(wire)
            return True

        return settle

    def _route(self, exchange: str, routing_key: str, wire: WireMessage, *, mandatory: bool) -> None:
        queues = self.app.settings.topology.route(exchange, routing_key, wire.headers)
        if not queues and mandatory:
            raise UnroutableError(exchange, routing_key)
        for queue in sorted(queues):
            self.queues[queue].append((wire, exchange, routing_key, False))

    def _park(self, queue: str, wire: WireMessage, delay: float) -> None:
        due = self.now + dt.timedelta(seconds=max(0.0, delay))
        heapq.heappush(self._delayed, (due, next(self._sequence), queue, wire))


__all__ = ["TestBroker"]
