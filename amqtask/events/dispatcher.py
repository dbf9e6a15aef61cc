"""The worker's side of events: a bounded, thread-safe buffer that never blocks.

The worker calls `task_received(...)`, `task_succeeded(...)` and so on at the
points of a message's life they name; each call builds the event only when its
group is enabled, and appends it to a buffer. The monitor link (amqtask.amqp.monitor)
drains the buffer onto the `celeryev` exchange from its own thread and connection.
Nothing here waits: when the buffer is full, or the broker has blocked the link
(connection.blocked, a memory or disk alarm), events are dropped and counted.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .build import TASK_GROUP, WORKER_GROUP, EventFactory, group_of

DEFAULT_CAPACITY = 10_000

DROP_FULL = "buffer_full"
DROP_BLOCKED = "broker_blocked"
DROP_UNSENT = "connection_lost"


@dataclass(frozen=True)
class DispatchCounts:
    queued: int
    sent: int
    dropped: dict[str, int]


class EventDispatcher:
    """Task and worker events for one node.

    Worker events (online, heartbeat, offline) are on while `worker_events` is true;
    task events follow `enable_task_events()` / `disable_task_events()` (Celery's -E
    and the enable_events / disable_events control commands). Every method is safe to
    call from any thread and returns at once.
    """

    def __init__(self, factory: EventFactory, *, task_events: bool = False, worker_events: bool = True,
                 capacity: int = DEFAULT_CAPACITY, on_drop: Callable[[str, int], None] | None = None) -> None:
        self.factory = factory
        self._groups = {g for g, on in ((TASK_GROUP, task_events), (WORKER_GROUP, worker_events)) if on}
        self._buffer: deque[dict[str, Any]] = deque()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._blocked = False
        self._sent = 0
        self._dropped = {DROP_FULL: 0, DROP_BLOCKED: 0, DROP_UNSENT: 0}
        self._on_drop = on_drop

    # -- switches --------------------------------------------------------------------
    @property
    def task_events(self) -> bool:
        return TASK_GROUP in self._groups

    @property
    def worker_events(self) -> bool:
        return WORKER_GROUP in self._groups

    def enable_task_events(self) -> bool:
        """Turn task events on; False if they already were."""
        with self._lock:
            changed = TASK_GROUP not in self._groups
            self._groups.add(TASK_GROUP)
        return changed

    def disable_task_events(self) -> bool:
        """Turn task events off; False if they already were."""
        with self._lock:
            changed = TASK_GROUP in self._groups
            self._groups.discard(TASK_GROUP)
        return changed

    def wants(self, group: str) -> bool:
        return group in self._groups

    # -- the buffer ------------------------------------------------------------------
    def send(self, event: dict[str, Any]) -> bool:
        """Queue an event for publishing; False if its group is off or it was dropped."""
        if group_of(event["type"]) not in self._groups:
            return False
        with self._lock:
            if self._blocked:
                reason = DROP_BLOCKED
            elif len(self._buffer) >= self._capacity:
                reason = DROP_FULL
            else:
                self._buffer.append(event)
                return True
            self._dropped[reason] += 1
        self._dropped_hook(reason, 1)
        return False

    def take(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` events, oldest first, removed from the buffer (for the link)."""
        with self._lock:
            count = min(limit, len(self._buffer))
            return [self._buffer.popleft() for _ in range(count)]

    def sent(self, count: int) -> None:
        """The link published `count` events."""
        with self._lock:
            self._sent += count

    def lost(self, count: int) -> None:
        """The link could not publish `count` events it had taken (connection lost)."""
        if count:
            with self._lock:
                self._dropped[DROP_UNSENT] += count
            self._dropped_hook(DROP_UNSENT, count)

    def set_blocked(self, blocked: bool) -> None:
        """The broker blocked (True) or unblocked (False) the link. While blocked,
        the buffer is emptied and new events are dropped rather than held."""
        flushed = 0
        with self._lock:
            self._blocked = blocked
            if blocked:
                flushed = len(self._buffer)
                self._buffer.clear()
                self._dropped[DROP_BLOCKED] += flushed
        if flushed:
            self._dropped_hook(DROP_BLOCKED, flushed)

    @property
    def blocked(self) -> bool:
        return self._blocked

    def counts(self) -> DispatchCounts:
        with self._lock:
            return DispatchCounts(queued=len(self._buffer), sent=self._sent, dropped=dict(self._dropped))

    def _dropped_hook(self, reason: str, count: int) -> None:
        if self._on_drop is not None:
            self._on_drop(reason, count)

    # -- what the worker calls, at each point of a message's life --------------------
    def task_received(self, **fields: Any) -> None:
        """After a task message is decoded, known and accepted (not revoked, not
        expired, not parked): uuid, name, args, kwargs, root_id, parent_id, retries,
        eta, expires."""
        if TASK_GROUP in self._groups:
            self.send(self.factory.task_received(**fields))

    def task_started(self, *, uuid: str) -> None:
        """When the pool starts running it."""
        if TASK_GROUP in self._groups:
            self.send(self.factory.task_started(uuid=uuid))

    def task_succeeded(self, *, uuid: str, result: Any, runtime: float | None) -> None:
        """When it returned; runtime in seconds."""
        if TASK_GROUP in self._groups:
            self.send(self.factory.task_succeeded(uuid=uuid, result=result, runtime=runtime))

    def task_failed(self, *, uuid: str, exception: Any, traceback: str | None) -> None:
        """When it raised for the last time (or its time limit or pool child killed it)."""
        if TASK_GROUP in self._groups:
            self.send(self.factory.task_failed(uuid=uuid, exception=exception, traceback=traceback))

    def task_retried(self, *, uuid: str, exception: Any, traceback: str | None) -> None:
        """When it asked for a retry and was republished."""
        if TASK_GROUP in self._groups:
            self.send(self.factory.task_retried(uuid=uuid, exception=exception, traceback=traceback))

    def task_revoked(self, *, uuid: str, terminated: bool = False, signum: int | None = None,
                     expired: bool = False) -> None:
        """When a revoked or expired task is dropped, or a running one terminated."""
        if TASK_GROUP in self._groups:
            self.send(self.factory.task_revoked(uuid=uuid, terminated=terminated, signum=signum, expired=expired))

    def task_rejected(self, *, uuid: str, requeue: bool) -> None:
        """When a received task is requeued or dead-lettered without running."""
        if TASK_GROUP in self._groups:
            self.send(self.factory.task_rejected(uuid=uuid, requeue=requeue))
