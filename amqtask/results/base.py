"""The result backend interface: one reading side for clients, one storing side
for workers.

A client (`AsyncResult`, `GroupResult`, the publisher) talks to a
`ResultBackend`: blocking calls, safe to share between threads. A worker talks to
the `ResultStore` that `ResultBackend.worker_store()` builds: coroutines, so
storing never blocks the event loop, and every failure to reach the backend
raises `BackendUnavailable` (nothing stored: retry later, do not ack).
"""
from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from ..protocol import WireMessage
from ..serializers import SERIALIZERS
from .meta import (
    FAILURE,
    PROPAGATE_STATES,
    READY_STATES,
    ChordsUnsupported,
    ResultMeta,
    TimeoutError,
)

# The worker's own publish: (exchange, routing_key, message) -> confirmed.
PublishFn = Callable[[str, str, WireMessage], Awaitable[None]]
CHORD_ERROR_MODULE = "celery.exceptions"


@dataclass(frozen=True)
class ChordPart:
    """One header task's outcome as the chord recorded it."""

    task_id: str
    state: str
    result: Any


@dataclass(frozen=True)
class ChordReady:
    """Every part of chord `group_id` has reported; `parts` are in header order.
    Returned once per chord to the worker that completed it (see
    `ResultStore.chord_part_return`); `token` is handed back to `chord_complete`."""

    group_id: str
    parts: tuple[ChordPart, ...]
    token: str

    @property
    def failed_part(self) -> ChordPart | None:
        return next((p for p in self.parts if p.state in PROPAGATE_STATES), None)

    def values(self) -> list[Any]:
        """The header results in order: the chord body's first argument."""
        return [p.result for p in self.parts]

    def error_payload(self) -> dict[str, Any] | None:
        """Celery's ChordError for the body when a header task failed, else None:
        `Dependency <id> raised <Exc>('message')`, as Celery's redis backend words it."""
        part = self.failed_part
        if part is None:
            return None
        return {"exc_type": "ChordError", "exc_message": [f"Dependency {part.task_id} raised {describe(part.result)}"],
                "exc_module": CHORD_ERROR_MODULE}


def describe(payload: Any) -> str:
    """`ValueError('boom')` for an exception payload, as Celery's repr shows it."""
    if isinstance(payload, Mapping) and "exc_type" in payload:
        message = payload.get("exc_message")
        args = message if isinstance(message, (list, tuple)) else [message]
        return f"{payload['exc_type']}({', '.join(repr(a) for a in args)})"
    return repr(payload)


class ResultStore(abc.ABC):
    """The worker's side of a backend. Every method raises BackendUnavailable when
    the backend cannot be reached (nothing was stored; the caller retries)."""

    supports_chords: bool = True

    @abc.abstractmethod
    async def store(self, meta: ResultMeta) -> None:
        """Store (or for rpc://, publish) one state of one task. A SUCCESS already
        stored is never overwritten (a redelivered task's second run does not
        replace its result), as in Celery."""

    async def chord_part_return(self, group_id: str, task_id: str, index: int | None, state: str, result: Any,
                                chord_size: int | None) -> ChordReady | None:
        """Record header task `task_id` (at `index` in the header) of chord
        `group_id`, atomically. Returns ChordReady when every part has reported and
        this caller holds the chord (the first to see it complete, or a redelivery
        of that same task); otherwise None. A task id is counted once however often
        it reports. `chord_size` comes from the chord body's signature (None: the
        size the client stored when it sent the chord)."""
        raise ChordsUnsupported("chords need a result backend (redis:// or db+postgresql://), not rpc://")

    async def chord_complete(self, ready: ChordReady) -> None:
        """The chord body was published (or failed): drop the chord's bookkeeping
        and remember it is done, so a late duplicate never sends the body again."""
        raise ChordsUnsupported("chords need a result backend (redis:// or db+postgresql://), not rpc://")

    async def close(self) -> None:
        """Release connections."""


class ResultBackend(abc.ABC):
    """The client's side of a backend, shared by every AsyncResult of an App.

    The publisher calls `expect` for each task it sends with results wanted (the
    returned text, if any, is the message's reply_to) and `ensure_queue` before
    the publish. Readers call `latest`/`wait`. Every method raises
    BackendUnavailable when the backend cannot be reached."""

    #: where results live, with any password hidden
    url: str = ""
    supports_chords: bool = True
    #: True when results reach only the sender (rpc://)
    sender_only: bool = False

    def expect(self, task_id: str) -> str | None:
        """A task with this id is about to be sent; returns its reply_to (rpc://) or None."""
        return None

    def ensure_queue(self) -> None:
        """Make sure results for the tasks just expected can be received."""

    def knows(self, task_id: str) -> bool:
        """Whether this client can ever see a result for task_id."""
        return True

    def poll(self, seconds: float = 0.0) -> None:
        """Let results that arrived be taken in (rpc://); others have nothing to do."""

    @abc.abstractmethod
    def latest(self, task_id: str) -> dict[str, Any] | None:
        """The task's current result document, or None when nothing is stored (PENDING)."""

    def wait(self, task_id: str, timeout: float | None, *, interval: float = 0.5) -> dict[str, Any]:
        """Block until the task is ready (SUCCESS, FAILURE, REVOKED); TimeoutError after
        `timeout` seconds (None: no limit). This default polls every `interval`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doc = self.latest(task_id)
            if doc is not None and doc.get("status") in READY_STATES:
                return doc
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no result for task {task_id} within {timeout:g}s")
            pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    async def wait_async(self, task_id: str, timeout: float | None, *, interval: float = 0.5) -> dict[str, Any]:
        """`wait` for asyncio code: the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.wait, task_id, timeout, interval=interval)

    def forget(self, task_id: str) -> None:
        """Delete the stored result."""

    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        """Store a group's member ids (Celery's GroupResult.save)."""
        raise NotImplementedError(f"{self.url} cannot save groups")

    def restore_group(self, group_id: str) -> list[str] | None:
        """The member ids saved for group_id, or None."""
        raise NotImplementedError(f"{self.url} cannot restore groups")

    def delete_group(self, group_id: str) -> None:
        raise NotImplementedError(f"{self.url} cannot delete groups")

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Called once before a chord's header tasks are sent."""
        if not self.supports_chords:
            raise ChordsUnsupported("chords need a result backend (redis:// or db+postgresql://), not rpc://")

    def cleanup(self) -> tuple[int, int]:
        """Delete expired results; returns (results, groups) deleted. Backends that
        expire entries by themselves (Redis TTL, rpc queues) return (0, 0)."""
        return 0, 0

    @abc.abstractmethod
    def worker_store(self, *, publish: PublishFn | None = None) -> ResultStore:
        """The storing side for a worker. rpc:// needs `publish` (the worker's own
        confirmed publish); the others open their own connections."""

    def close(self) -> None:
        """Release connections."""


def operation_timeout(connect_timeout: float) -> float:
    """How long one backend operation may take before the backend counts as
    unavailable: never under 10 s (a busy server is not a dead one)."""
    return max(10.0, connect_timeout)


def group_tuple(group_id: str, task_ids: list[str]) -> list[Any]:
    """Celery's GroupResult.as_tuple() in JSON: [[gid, parent], [[[tid, parent], None], ...]]."""
    return [[group_id, None], [[[tid, None], None] for tid in task_ids]]


def ids_from_group_tuple(value: Any) -> list[str] | None:
    """The member ids of a stored GroupResult tuple (tolerant of nested parents)."""
    try:
        members = value[1]
        return [str(member[0][0]) for member in members]
    except (TypeError, IndexError, KeyError):
        return None


def json_bytes(value: Any) -> bytes:
    """Celery's JSON result encoding (kombu's json, its type markers included)."""
    return SERIALIZERS["json"].dumps(value)


def json_value(data: bytes | str | None) -> Any:
    """A stored JSON value, kombu's type markers read back as their types."""
    if data is None:
        return None
    if isinstance(data, memoryview):
        data = bytes(data)
    return SERIALIZERS["json"].loads(data)


def failure_meta(task_id: str, payload: Mapping[str, Any], **fields: Any) -> ResultMeta:
    """A FAILURE ResultMeta for an exception payload (e.g. a chord body whose header failed)."""
    return ResultMeta(task_id=task_id, status=FAILURE, result=dict(payload), **fields)
