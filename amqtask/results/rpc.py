"""rpc://: results travel back over RabbitMQ to the sender's reply queue (Celery's rpc format).

Only the process that sent a task can read its result, once it is taken in;
chords cannot be counted (there is no shared store). The pika side lives in
`amqtask.amqp.replies`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import AmqtaskError, BrokerUnavailable, UnroutableError
from ..protocol import WireMessage
from ..serializers import Codec
from .base import PublishFn, ResultBackend, ResultStore
from .meta import READY_STATES, BackendUnavailable, ChordsUnsupported, ResultMeta, TimeoutError, result_body

if TYPE_CHECKING:
    from ..amqp.replies import ReplyQueue
    from ..settings import BrokerSettings, ResultSettings

log = logging.getLogger("amqtask.results")


class ResultBrokerUnavailable(BrokerUnavailable, BackendUnavailable):
    """rpc://'s backend is the broker: both errors at once."""


class RpcBackend(ResultBackend):
    url = "rpc://"
    supports_chords = False
    sender_only = True

    def __init__(self, broker: "BrokerSettings", settings: "ResultSettings") -> None:
        from ..amqp.replies import ReplyQueue

        self.broker = broker
        self.settings = settings
        # Built here, not on first use: it connects only when used, and threads sending
        # their first tasks at once must all name the same queue in reply_to.
        self.queue: "ReplyQueue" = ReplyQueue(broker, expires_ms=settings.expires_ms,
                                              max_pending=settings.rpc_max_pending, accept=broker.accept_content)

    def expect(self, task_id: str) -> str:
        return self.queue.expect(task_id)

    def ensure_queue(self) -> None:
        self._guard(self.queue.ensure_queue)

    def knows(self, task_id: str) -> bool:
        return self.queue.knows(task_id)

    def poll(self, seconds: float = 0.0) -> None:
        self._guard(self.queue.poll, seconds)

    def latest(self, task_id: str) -> dict[str, Any] | None:
        return self.queue.latest(task_id)

    def wait(self, task_id: str, timeout: float | None, *, interval: float = 0.5) -> dict[str, Any]:
        from ..amqp.replies import wait_for

        doc = self._guard(wait_for, self.queue, task_id, timeout, READY_STATES)
        if doc is None:
            raise TimeoutError(f"no result for task {task_id} within {timeout:g}s")
        return doc

    def forget(self, task_id: str) -> None:
        self.queue.forget(task_id)

    def set_chord_size(self, group_id: str, size: int) -> None:
        raise ChordsUnsupported("chords need a result backend (redis:// or db+postgresql://); rpc:// cannot count "
                                "a chord's parts")

    def worker_store(self, *, publish: PublishFn | None = None) -> ResultStore:
        if publish is None:
            raise TypeError("rpc:// stores results by publishing them: pass the worker's publish function")
        return RpcStore(publish, serializer=self.settings.serializer, accept=self.broker.accept_content)

    def close(self) -> None:
        self.queue.close()

    def _guard(self, fn: Any, *args: Any) -> Any:
        from ..amqp.replies import ReplyQueueUnavailable

        try:
            return fn(*args)
        except ReplyQueueUnavailable as exc:
            raise ResultBrokerUnavailable(str(exc)) from None


class RpcStore(ResultStore):
    """Publishes each result to the task's reply_to through the worker's own
    connection. A task without reply_to (nobody asked) stores nothing; a reply queue
    that no longer exists (its client went away) is not an error."""

    supports_chords = False

    def __init__(self, publish: PublishFn, *, serializer: str = "json", accept: tuple[str, ...] = ("json",)) -> None:
        self.publish = publish
        self.serializer = serializer
        self.codec = Codec(accept)

    def wire(self, meta: ResultMeta) -> WireMessage:
        body = result_body(meta.task_id, meta.status, meta.result, meta.traceback)
        if meta.date_done is not None:
            body["date_done"] = meta.date_done.isoformat()
        data, content_type, encoding, _ = self.codec.encode(body, self.serializer)
        return WireMessage(body=data, headers={}, content_type=content_type, content_encoding=encoding,
                           correlation_id=meta.task_id, delivery_mode=2)

    async def store(self, meta: ResultMeta) -> None:
        if not meta.reply_to:
            return
        wire = self.wire(meta)
        try:
            await self.publish("", meta.reply_to, wire)
        except UnroutableError:
            log.debug("result of %s not delivered: reply queue %s is gone", meta.task_id, meta.reply_to)
        except (AmqtaskError, OSError, RuntimeError) as exc:  # the publish port's failures: broker trouble
            raise BackendUnavailable(f"cannot publish the result of {meta.task_id}: {exc}") from exc
