"""Result states, errors, and Celery's result document.

A result is one JSON document per task, the same one Celery 5 writes in every
backend: `{"status", "result", "traceback", "children", "date_done", "task_id"}`,
plus `name`, `args`, `kwargs`, `worker`, `retries` and `queue` with
`result_extended`. A failure's `result` is Celery's exception payload
`{"exc_type", "exc_message", "exc_module"}`.
"""
from __future__ import annotations

import builtins
import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import AmqtaskError
from ..serializers import SERIALIZERS

PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED = "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})


class TaskError(AmqtaskError):
    """A task failed in a worker; raised by `AsyncResult.get()` when the failure's
    own exception type cannot be rebuilt here. `.traceback` holds the worker's."""

    traceback: str | None = None


class TaskRevokedError(AmqtaskError):
    """The task was not run: it expired (or was revoked) before a worker took it."""


class TimeoutError(AmqtaskError):  # noqa: A001 - mirrors Celery's name, lives in this namespace only
    """No result arrived within the timeout given to get()."""


class UnknownTaskError(AmqtaskError):
    """This process did not send the task (or no longer remembers it), so its result
    cannot arrive here (rpc:// delivers a result only to the sender)."""


class ResultsDisabled(AmqtaskError):
    """No result backend is configured, so there is no result to read."""


class BackendUnavailable(AmqtaskError):
    """The result backend (Redis, PostgreSQL, the broker for rpc://) cannot be
    reached or refused the operation. Nothing was stored; retrying later is safe."""


class ChordsUnsupported(AmqtaskError):
    """Chords need a result backend that can count (redis:// or db+postgresql://)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class ResultMeta:
    """What a worker stores for one task. `result` is JSON-able: the return value,
    or for RETRY/FAILURE/REVOKED Celery's exception payload (`exception_payload`).
    `date_done` defaults to now for ready states, as Celery sets it. `reply_to` is
    where rpc:// publishes (the task message's reply_to); other backends ignore it."""

    task_id: str
    status: str
    result: Any = None
    traceback: str | None = None
    name: str | None = None
    args: tuple | list | None = None
    kwargs: Mapping[str, Any] | None = None
    worker: str | None = None
    retries: int | None = None
    queue: str | None = None
    children: tuple = ()
    date_done: dt.datetime | None = None
    reply_to: str | None = None
    group_id: str | None = None
    parent_id: str | None = None

    @property
    def ready(self) -> bool:
        return self.status in READY_STATES

    def done_at(self) -> dt.datetime | None:
        if self.date_done is not None:
            return self.date_done
        return utcnow() if self.ready else None

    def document(self, *, extended: bool = False) -> dict[str, Any]:
        """Celery's result document, keys in the order Celery writes them."""
        done = self.done_at()
        doc: dict[str, Any] = {
            "status": self.status,
            "result": self.result,
            "traceback": self.traceback,
            "children": list(self.children),
            "date_done": done.isoformat() if done else None,
        }
        if self.group_id:
            doc["group_id"] = self.group_id
        if self.parent_id:
            doc["parent_id"] = self.parent_id
        if extended:
            doc.update(name=self.name, args=None if self.args is None else list(self.args),
                       kwargs=None if self.kwargs is None else dict(self.kwargs), worker=self.worker,
                       retries=self.retries, queue=self.queue)
        doc["task_id"] = self.task_id
        return doc


def result_body(task_id: str, state: str, result: Any = None, traceback: str | None = None) -> dict[str, Any]:
    """The rpc:// result message (Celery's rpc format) for one task."""
    return {
        "task_id": task_id,
        "status": state,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": utcnow().isoformat() if state in READY_STATES else None,
    }


def exception_payload(exc: BaseException) -> dict[str, Any]:
    """Celery's JSON form of an exception (celery.backends.base's prepare_exception):
    the type's qualified name (`Outer.Error` for a nested class), its module, and its
    args, each as it is when JSON can hold it, else as its repr."""
    kind = type(exc)
    return {"exc_type": getattr(kind, "__qualname__", kind.__name__), "exc_message": [_serializable(a) for a in exc.args],
            "exc_module": kind.__module__}


def _serializable(value: Any) -> Any:
    try:
        SERIALIZERS["json"].dumps(value)
    except Exception:  # noqa: BLE001 - whatever the encoder refuses is shown as its repr, as Celery does
        return repr(value)
    return value


def exception_from_payload(payload: Any, traceback: str | None = None) -> BaseException:
    """Rebuild an exception: builtins and amqtask's own types as themselves, any other
    as a TaskError subclass of the same name (no module is imported on a message's word)."""
    if not isinstance(payload, Mapping):
        error: BaseException = TaskError(repr(payload))
    else:
        name = str(payload.get("exc_type", "TaskError"))
        message = payload.get("exc_message", [])
        args = tuple(message) if isinstance(message, (list, tuple)) else (message,)
        module = payload.get("exc_module")
        known = getattr(builtins, name, None) if module in ("builtins", None) else None
        if name == "TaskRevokedError":
            known = TaskRevokedError
        if isinstance(known, type) and issubclass(known, BaseException):
            try:
                error = known(*args)
            except Exception:  # an exception type with an unusual constructor
                error = TaskError(name, *args)
        else:  # `name` may be qualified (Outer.Error): the class is named by its last part
            cls = type(name.rpartition(".")[2], (TaskError,), {"__module__": str(module or "amqtask.results"),
                                                                "__qualname__": name})
            error = cls(*args)
    if traceback:
        error.traceback = traceback  # type: ignore[attr-defined]
    return error


def parse_date(value: Any) -> dt.datetime | None:
    """A document's date_done (ISO text, or a datetime from a database) as aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
