"""The client's reply queue for rpc:// results (pika, blocking, thread-safe).

Each client owns one queue, `amqtask.reply.<uuid>`, named in the reply_to of the
tasks it sends; workers publish results there (Celery's rpc format).

Bounded, whoever reads or not:
- in the broker: the queue holds at most `max_pending` results (the oldest are
  dropped), each for at most `expires`, and the queue itself is deleted by the
  broker after `expires` without a consumer;
- in the client: it remembers at most `max_pending` task ids and results, the
  least recently sent first forgotten (asking for one then raises
  UnknownTaskError instead of waiting forever).

The queue is durable and results are persistent, so a broker restart loses
nothing; after any reconnect the queue is declared again (it may have expired or
been deleted) and consumed again. A background thread answers the broker's
heartbeats between get() calls, so an idle client keeps its connection.

A forked child gets a queue of its own (see amqtask.forks): results for the
tasks it sends reach it, never its parent, and the parent's stay the parent's.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Mapping

import pika
import pika.exceptions as px

from ..errors import AmqtaskError
from ..forks import start_afresh_after_fork
from ..serializers import Codec
from ..settings import BrokerSettings
from .blocking import answered_within, close_within
from .params import pika_parameters

log = logging.getLogger("amqtask.results")
_DROPPED = object()


class ReplyQueueUnavailable(AmqtaskError):
    """The broker cannot be reached to read results."""


class ReplyQueue:
    def __init__(self, broker: BrokerSettings, *, expires_ms: int, max_pending: int,
                 accept: tuple[str, ...]) -> None:
        self.broker = broker
        self.expires_ms = expires_ms
        self.max_pending = max_pending
        self.codec = Codec(accept)
        self.after_fork()
        start_afresh_after_fork(self)

    def after_fork(self) -> None:
        """A queue, pending set, locks and keep-alive of this process's own (at
        creation, and in a forked child before it runs anything)."""
        self.name = f"amqtask.reply.{uuid.uuid4()}"
        self._lock = threading.RLock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        # task id -> its latest result document, or _DROPPED (none yet); ordered by send
        self._pending: OrderedDict[str, Any] = OrderedDict()
        self._keepalive: threading.Thread | None = None
        self._closed = threading.Event()

    # -- what the publisher calls ------------------------------------------------
    def expect(self, task_id: str) -> str:
        with self._lock:
            self._pending[task_id] = _DROPPED
            self._pending.move_to_end(task_id)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        return self.name

    def ensure_queue(self) -> None:
        with self._lock:
            self._open()

    # -- what readers call -------------------------------------------------------
    def knows(self, task_id: str) -> bool:
        return task_id in self._pending

    def latest(self, task_id: str) -> dict[str, Any] | None:
        value = self._pending.get(task_id, _DROPPED)
        return None if value is _DROPPED else value

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._pending.pop(task_id, None)

    def poll(self, seconds: float = 0.0) -> None:
        """Take in whatever results arrived, waiting up to `seconds` for one."""
        with self._lock:
            try:
                self._open()
                assert self._connection is not None
                self._connection.process_data_events(time_limit=seconds)
            except (px.AMQPConnectionError, px.StreamLostError, px.ChannelWrongStateError,
                    px.ChannelClosed, px.ConnectionWrongStateError, OSError) as exc:
                log.warning("result connection lost (%s); reconnecting on the next read", type(exc).__name__)
                self._reset()

    def close(self) -> None:
        """Delete the reply queue and close. A connection lost meanwhile (even one that
        has not noticed yet) is replaced for the delete, so the queue does not linger
        until it expires; a broker that is down leaves it to expire."""
        self._closed.set()
        with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
            if connection is not None:  # ours: delete the queue on it, else on a new one
                for attempt in range(2):
                    try:
                        if attempt or not connection.is_open:
                            close_within(connection, self.broker.connect_timeout)
                            connection = pika.BlockingConnection(pika_parameters(self.broker, "amqtask results"))
                        with answered_within(connection, self.broker.publish_timeout, "the reply queue's delete"):
                            connection.channel().queue_delete(self.name)
                        break
                    except (px.AMQPError, OSError):
                        continue
            close_within(connection, self.broker.connect_timeout)

    # -- connection --------------------------------------------------------------
    def _open(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._reset()
        try:
            self._connection = pika.BlockingConnection(pika_parameters(self.broker, f"amqtask results pid {os.getpid()}"))
            with answered_within(self._connection, self.broker.publish_timeout, "the reply queue's declare"):
                channel = self._connection.channel()
                channel.queue_declare(self.name, durable=True, auto_delete=False, arguments={
                    "x-expires": self.expires_ms, "x-message-ttl": self.expires_ms,
                    "x-max-length": self.max_pending, "x-overflow": "drop-head"})
                channel.basic_consume(self.name, self._on_message, auto_ack=True)
            channel.add_on_cancel_callback(lambda *_: self._on_cancelled())
        except (px.AMQPError, OSError) as exc:
            self._reset()
            raise ReplyQueueUnavailable(f"cannot connect to the broker for results: {type(exc).__name__} {exc}".strip()) from None
        self._channel = channel
        self._start_keepalive()
        return channel

    def _on_cancelled(self) -> None:
        # The queue was deleted under us: the next read declares and consumes it again.
        log.warning("reply queue %s was deleted on the broker; declaring it again", self.name)
        self._channel = None

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        close_within(connection, self.broker.connect_timeout)

    def _start_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.is_alive():
            return
        interval = max(1.0, (self.broker.heartbeat or 60) / 4)
        self._keepalive = threading.Thread(target=self._keep_alive, args=(interval,), daemon=True,
                                           name=f"amqtask-results-keepalive-{self.name[-8:]}")
        self._keepalive.start()

    def _keep_alive(self, interval: float) -> None:
        """Answer heartbeats (and take in results) while nobody reads: pika's blocking
        connection only does I/O when called."""
        while not self._closed.wait(interval):
            if not self._lock.acquire(timeout=interval):
                continue  # a reader is doing I/O already
            try:
                if self._connection is not None and self._connection.is_open:
                    self._connection.process_data_events(time_limit=0)
            except Exception as exc:  # noqa: BLE001 - any failure here is a lost connection
                log.debug("result keep-alive: %s", exc)
                self._reset()
            finally:
                self._lock.release()

    def _on_message(self, channel: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        try:
            payload = self.codec.decode(body, props.content_type, props.content_encoding)
        except AmqtaskError:
            return  # not a result we can read; nothing waits for it
        if not isinstance(payload, Mapping):
            return
        task_id = str(payload.get("task_id") or props.correlation_id)
        if task_id in self._pending:  # a result for a task we forgot stays forgotten
            self._pending[task_id] = dict(payload)


def wait_for(queue: ReplyQueue, task_id: str, timeout: float | None, ready: frozenset[str]) -> dict[str, Any] | None:
    """Poll `queue` until task_id's document has a ready state, or the timeout passes
    (then None). Raises nothing for a slow broker: every poll is bounded."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        payload = queue.latest(task_id)
        if payload is not None and payload.get("status") in ready:
            return payload
        remaining = 1.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return None
        queue.poll(min(remaining, 0.5))

