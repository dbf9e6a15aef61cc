"""AsyncResult and GroupResult: handles on results, readable from any process
(rpc://: only from the sender)."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any, Generator, Iterator

from ..errors import BlockingGetError
from .meta import (
    EXCEPTION_STATES,
    FAILURE,
    PENDING,
    READY_STATES,
    SUCCESS,
    ResultsDisabled,
    TimeoutError,
    UnknownTaskError,
    exception_from_payload,
    parse_date,
)

if TYPE_CHECKING:
    from ..app import App
    from ..router import Destination
    from .base import ResultBackend

NO_BACKEND = ("no result backend is configured: set results.backend in routing.yaml (rpc://, redis://HOST/0, "
              "db+postgresql://USER@HOST/DB) or App(result_backend=...)")


def _backend_of(app: "App | None") -> Any:
    return None if app is None else app.backend


class AsyncResult:
    """A task's result: `AsyncResult(task_id, app=app)` from any process, or what
    `delay()` returns. Reads go to the app's result backend."""

    def __init__(self, id: str, task_name: str = "", destination: "Destination | None" = None,
                 backend: "ResultBackend | None" = None, *, app: "App | None" = None,
                 parent: "AsyncResult | GroupResult | None" = None) -> None:
        self.id = id
        self.task_name = task_name
        self.destination = destination
        self.backend = backend if backend is not None else _backend_of(app)
        self.parent = parent

    @property
    def task_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.task_name}>".replace(" >", ">")

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        return isinstance(other, str) and other == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading -------------------------------------------------------------------
    def _reader(self) -> Any:
        if self.backend is None:
            raise ResultsDisabled(NO_BACKEND)
        if not self.backend.knows(self.id):
            raise UnknownTaskError(
                f"task {self.id} was not sent by this process with results enabled, or was forgotten; with rpc:// "
                "results travel back to the sender's reply queue only (use redis:// or db+postgresql:// to read "
                "results from any process)")
        return self.backend

    def _document(self) -> dict[str, Any] | None:
        backend = self._reader()
        doc = backend.latest(self.id)
        if doc is None or doc.get("status") not in READY_STATES:
            backend.poll(0)
            doc = backend.latest(self.id)
        return doc

    @property
    def state(self) -> str:
        """PENDING (nothing known yet), STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        doc = self._document()
        return str(doc.get("status") or PENDING) if doc else PENDING

    status = state

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        """The return value; for RETRY, FAILURE and REVOKED the exception (as Celery)."""
        doc = self._document()
        if not doc:
            return None
        if doc.get("status") in EXCEPTION_STATES:
            return exception_from_payload(doc.get("result"), doc.get("traceback"))
        return doc.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        doc = self._document()
        return None if doc is None else doc.get("traceback")

    @property
    def date_done(self) -> dt.datetime | None:
        doc = self._document()
        return None if doc is None else parse_date(doc.get("date_done"))

    def _extended(self, key: str) -> Any:
        doc = self._document()
        return None if doc is None else doc.get(key)

    name = property(lambda self: self._extended("name"), doc="The task's name (results.extended).")
    args = property(lambda self: self._extended("args"), doc="Its positional arguments (results.extended).")
    kwargs = property(lambda self: self._extended("kwargs"), doc="Its keyword arguments (results.extended).")
    worker = property(lambda self: self._extended("worker"), doc="The worker that ran it (results.extended).")
    retries = property(lambda self: self._extended("retries"), doc="Retries so far (results.extended).")
    queue = property(lambda self: self._extended("queue"), doc="The queue it came from (results.extended).")

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            disable_sync_subtasks: bool = True) -> Any:
        """Wait for the result and return it. A failure re-raises the task's exception
        (with the worker's traceback in `.traceback`) unless `propagate=False`, which
        returns the exception. `timeout` (seconds; None waits as long as it takes)
        raises TimeoutError; `interval` is how often a polling backend (PostgreSQL)
        looks; Redis wakes by pub/sub, rpc:// by the broker delivering. Inside a
        running task this is refused (BlockingGetError, a RuntimeError) unless
        `disable_sync_subtasks=False`, as in Celery."""
        if disable_sync_subtasks:
            assert_will_not_block()
        backend = self._reader()
        doc = _wait(backend, self.id, timeout, interval)
        return _outcome(doc, propagate)

    wait = get

    async def get_async(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """get() for asyncio code; also `await result`."""
        backend = self._reader()
        if hasattr(backend, "wait_async"):
            doc = await backend.wait_async(self.id, timeout, interval=interval)
        else:
            doc = await asyncio.to_thread(_wait, backend, self.id, timeout, interval)
        return _outcome(doc, propagate)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.get_async().__await__()

    def forget(self) -> None:
        """Delete the stored result (and, for rpc://, stop waiting for it)."""
        if self.backend is None:
            raise ResultsDisabled(NO_BACKEND)
        if hasattr(self.backend, "forget"):
            self.backend.forget(self.id)

    def as_tuple(self) -> list[Any]:
        """Celery's result tuple: [[id, parent], None]."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], None]


def _wait(backend: Any, task_id: str, timeout: float | None, interval: float) -> dict[str, Any]:
    from .base import ResultBackend

    if isinstance(backend, ResultBackend):
        return backend.wait(task_id, timeout, interval=interval)
    return backend.wait(task_id, timeout)  # an in-memory stand-in (amqtask.testing)


def _outcome(doc: dict[str, Any], propagate: bool) -> Any:
    if doc.get("status") == SUCCESS:
        return doc.get("result")
    error = exception_from_payload(doc.get("result"), doc.get("traceback"))
    if propagate:
        raise error
    return error


class GroupResult:
    """The results of a group, in the order its tasks were given."""

    def __init__(self, id: str, results: list[AsyncResult], *, app: "App | None" = None,
                 backend: "ResultBackend | None" = None, parent: AsyncResult | None = None) -> None:
        self.id = id
        self.results = list(results)
        self.backend = backend if backend is not None else _backend_of(app)
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    children = property(lambda self: self.results)

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            disable_sync_subtasks: bool = True) -> list[Any]:
        """Every task's result, in order. `timeout` bounds the whole wait. With
        propagate, the first failure (in order) is raised."""
        if disable_sync_subtasks:
            assert_will_not_block()
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(result.get(timeout=remaining, propagate=propagate, interval=interval,
                                         disable_sync_subtasks=False))
            except TimeoutError:
                raise TimeoutError(f"group {self.id}: {self.completed_count()} of {len(self)} tasks done "
                                   f"within {timeout:g}s") from None
        return values

    join = get

    async def get_async(self, timeout: float | None = None, propagate: bool = True,
                        interval: float = 0.5) -> list[Any]:
        waits = [r.get_async(timeout=timeout, propagate=propagate, interval=interval) for r in self.results]
        return list(await asyncio.gather(*waits))

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self.get_async().__await__()

    def completed_count(self) -> int:
        """How many tasks succeeded."""
        return sum(1 for r in self.results if r.successful())

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def forget(self) -> None:
        for result in self.results:
            result.forget()
        if self.backend is not None and hasattr(self.backend, "delete_group"):
            self.backend.delete_group(self.id)

    def save(self) -> "GroupResult":
        """Store the member ids so `GroupResult.restore(id)` works in any process
        (Celery's taskset key/table: Celery's GroupResult.restore reads it too)."""
        if self.backend is None:
            raise ResultsDisabled(NO_BACKEND)
        self.backend.save_group(self.id, [r.id for r in self.results])
        return self

    @classmethod
    def restore(cls, group_id: str, *, app: "App | None" = None,
                backend: "ResultBackend | None" = None) -> "GroupResult | None":
        backend = backend if backend is not None else _backend_of(app)
        if backend is None:
            raise ResultsDisabled(NO_BACKEND)
        ids = backend.restore_group(group_id)
        if ids is None:
            return None
        return cls(group_id, [AsyncResult(i, backend=backend) for i in ids], backend=backend)

    def as_tuple(self) -> list[Any]:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], [r.as_tuple() for r in self.results]]


def assert_will_not_block() -> None:
    """Refuse to wait for a result inside a task a worker runs: the worker slot would
    wait for work that may need that very slot (with one slot, forever)."""
    from ..worker.request import current_request

    request = current_request.get()
    if request is None or getattr(request, "is_eager", False) or getattr(request, "called_directly", False):
        return
    raise BlockingGetError(
        f"never call result.get() within a task ({request.task}[{request.id}]): it waits on a worker slot that "
        "other tasks may need; chain the tasks instead, or pass disable_sync_subtasks=False if you must")
