"""Results over RabbitMQ in Celery's rpc format.

A client that wants results names its own reply queue in each task's `reply_to`;
the worker publishes `{"task_id", "status", "result", "traceback", "children",
"date_done"}` there through the default exchange with `correlation_id` = task id.
A Celery client using the rpc:// backend reads these, and the reverse.
"""
from __future__ import annotations

import builtins
import datetime as dt
import threading
import time
import uuid
from typing import Any, Mapping

import pika
import pika.exceptions as px

from .amqp.params import pika_parameters
from .errors import AmqtaskError, BrokerUnavailable
from .router import Destination
from .serializers import Codec
from .settings import BrokerSettings, ResultSettings

PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED = "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})


class TaskError(AmqtaskError):
    """A task failed in a worker; raised by `AsyncResult.get()` when the failure's
    own exception type cannot be rebuilt here. `.traceback` holds the worker's."""

    traceback: str | None = None


class TaskRevokedError(AmqtaskError):
    """The task was not run: it expired (or was revoked) before a worker took it."""


class TimeoutError(AmqtaskError):  # noqa: A001 - mirrors Celery's name, lives in this namespace only
    """No result arrived within the timeout given to get()."""


class UnknownTaskError(AmqtaskError):
    """This process did not send the task, so its result cannot arrive here."""


def result_body(task_id: str, state: str, result: Any = None, traceback: str | None = None) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "status": state,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def exception_payload(exc: BaseException) -> dict[str, Any]:
    """Celery's JSON form of an exception: type name, module and args."""
    args = []
    for a in exc.args:
        args.append(a if isinstance(a, (str, int, float, bool, type(None))) else repr(a))
    return {"exc_type": type(exc).__name__, "exc_message": args, "exc_module": type(exc).__module__}


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
        else:
            cls = type(name, (TaskError,), {"__module__": str(module or "amqtask.results")})
            error = cls(*args)
    if traceback:
        error.traceback = traceback  # type: ignore[attr-defined]
    return error


class ResultConsumer:
    """Owns this client's reply queue and reads results from it (blocking, thread-safe)."""

    def __init__(self, broker: BrokerSettings, settings: ResultSettings, accept: tuple[str, ...]) -> None:
        self.broker = broker
        self.settings = settings
        self.codec = Codec(accept)
        self.queue = f"amqtask.reply.{uuid.uuid4()}"
        self._lock = threading.RLock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._results: dict[str, dict[str, Any]] = {}
        self._sent: set[str] = set()
        self._declared = False

    def expect(self, task_id: str) -> str:
        """Record that `task_id` will report here; returns the reply_to to send."""
        self._sent.add(task_id)
        return self.queue

    def ensure_queue(self) -> None:
        """Declare the reply queue (once) before the first task that names it is sent."""
        if not self._declared:
            with self._lock:
                self._open()

    def knows(self, task_id: str) -> bool:
        return task_id in self._sent

    def _open(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        try:
            self._connection = pika.BlockingConnection(pika_parameters(self.broker, "amqtask results"))
        except (px.AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"cannot connect to the broker for results: {type(exc).__name__}") from None
        channel = self._connection.channel()
        # Not exclusive: results wait in the queue while this client reconnects.
        channel.queue_declare(self.queue, durable=False, auto_delete=False,
                              arguments={"x-expires": self.settings.expires_ms})
        channel.basic_consume(self.queue, self._on_message, auto_ack=True)
        self._channel = channel
        self._declared = True
        return channel

    def _on_message(self, channel: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        try:
            payload = self.codec.decode(body, props.content_type, props.content_encoding)
        except AmqtaskError:
            return  # not a result we can read; nothing waits for it
        if isinstance(payload, Mapping):
            task_id = str(payload.get("task_id") or props.correlation_id)
            self._results[task_id] = dict(payload)

    def poll(self, seconds: float = 0.0) -> None:
        with self._lock:
            try:
                self._open()
                assert self._connection is not None
                self._connection.process_data_events(time_limit=seconds)
            except (px.AMQPConnectionError, px.StreamLostError, px.ChannelWrongStateError, OSError):
                self._channel = None  # re-opened (and re-consumed) on the next poll

    def latest(self, task_id: str) -> dict[str, Any] | None:
        return self._results.get(task_id)

    def wait(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            payload = self._results.get(task_id)
            if payload is not None and payload.get("status") in READY_STATES:
                return payload
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no result for task {task_id} within {timeout:g}s")
            self.poll(min(remaining, 0.5))

    def forget(self, task_id: str) -> None:
        self._results.pop(task_id, None)
        self._sent.discard(task_id)

    def close(self) -> None:
        with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
            if connection is not None and connection.is_open:
                try:
                    if self._declared:
                        connection.channel().queue_delete(self.queue)
                    connection.close()
                except (px.AMQPError, OSError):
                    pass


class AsyncResult:
    """A handle on a published task: its id, where it went, and (when this process
    sent it with results enabled) its state and result."""

    def __init__(self, id: str, task_name: str = "", destination: Destination | None = None,
                 backend: ResultConsumer | None = None) -> None:
        self.id = id
        self.task_name = task_name
        self.destination = destination
        self.backend = backend

    @property
    def task_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.task_name}>"

    def __str__(self) -> str:
        return self.id

    def _backend(self) -> ResultConsumer:
        if self.backend is None or not self.backend.knows(self.id):
            raise UnknownTaskError(
                f"task {self.id} was not sent by this process with results enabled; results travel back to the "
                "sender's reply queue only (Celery's rpc model)"
            )
        return self.backend

    def _payload(self) -> dict[str, Any] | None:
        backend = self._backend()
        payload = backend.latest(self.id)
        if payload is None or payload.get("status") not in READY_STATES:
            backend.poll(0)
            payload = backend.latest(self.id)
        return payload

    @property
    def state(self) -> str:
        payload = self._payload()
        return str(payload["status"]) if payload else PENDING

    status = state

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        payload = self._payload()
        return None if payload is None else payload.get("result")

    @property
    def traceback(self) -> str | None:
        payload = self._payload()
        return None if payload is None else payload.get("traceback")

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the result. A failure re-raises the task's exception (with the
        worker's traceback in `.traceback`) unless `propagate=False`."""
        payload = self._backend().wait(self.id, timeout)
        if payload["status"] == SUCCESS or not propagate:
            return payload.get("result")
        error = exception_from_payload(payload.get("result"), payload.get("traceback"))
        raise error
