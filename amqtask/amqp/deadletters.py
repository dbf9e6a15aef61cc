"""The broker side of `amqtask.deadletters` (pika): read with basic.get and manual
acks, publish with confirms, lock with an exclusive queue.

One connection; a channel per reader, so that closing a reader returns exactly the
messages it took and did not ack. A passive declare that fails closes its channel
(AMQP's way of saying 404), so each one gets a short-lived channel of its own.

Every wait for the broker ends within publish_timeout (`answered_within`): a queue
that never confirms a publish, or a network gone silent, would otherwise hold a
requeue, and its dead letters, until heartbeats are missed. The connection is then
torn down, and the broker returns every message it had handed out on it.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import pika
import pika.exceptions as px
from pika.adapters.blocking_connection import BlockingChannel

from ..deadletters import DeadLetterError, Fetched, Outgoing
from ..errors import BrokerError, BrokerUnavailable, NackError, PublishError, UnroutableError
from ..settings import BrokerSettings
from .blocking import BrokerSilent, answered_within, close_within, pika_headers
from .params import pika_parameters

_PROPERTIES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
               "expiration", "message_id", "timestamp", "type", "user_id", "app_id")
NOT_FOUND = 404
RESOURCE_LOCKED = 405
F = TypeVar("F", bound=Callable[..., Any])
# A connection or channel lost mid-operation.
_LOST = (px.AMQPConnectionError, px.StreamLostError, px.ChannelWrongStateError, px.ConnectionWrongStateError,
         px.ChannelClosed, OSError)


class NoAnswer(BrokerError):
    """The broker did not answer within publish_timeout; the connection was dropped."""


def _translated(method: F) -> F:
    """pika's connection errors as amqtask's BrokerError, and every wait bounded by
    publish_timeout (on the connection `self._live_connection()` names). Nothing taken
    is lost when the connection goes: the broker returns every unacknowledged message."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        connection, timeout = self._live_connection(), self.timeout
        try:
            if connection is None or not connection.is_open:
                return method(self, *args, **kwargs)
            with answered_within(connection, timeout, method.__name__):
                return method(self, *args, **kwargs)
        except BrokerError:
            raise
        except BrokerSilent:
            raise NoAnswer(f"the broker did not answer within {timeout:g}s (publish_timeout); the connection "
                           "was dropped and messages not yet moved stay where they were") from None
        except _LOST as exc:
            raise BrokerError(f"the connection to the broker was lost ({type(exc).__name__}: {exc}); "
                              "messages not yet moved stay where they were") from None

    return wrapper  # type: ignore[return-value]


class PikaReader:
    """Takes messages from one queue on its own channel (see DeadLetterBroker.reader)."""

    def __init__(self, channel: BlockingChannel | None, queue: str, timeout: float) -> None:
        self._channel = channel  # None: the queue does not exist
        self._queue = queue
        self._held: list[int] = []
        self.timeout = timeout

    def _live_connection(self) -> pika.BlockingConnection | None:
        return self._channel.connection if self._channel is not None else None

    @_translated
    def get(self) -> Fetched | None:
        if self._channel is None:
            return None
        method, properties, body = self._channel.basic_get(self._queue, auto_ack=False)
        if method is None:
            return None
        self._held.append(method.delivery_tag)
        return Fetched(method.delivery_tag, body, properties_of(properties), dict(properties.headers or {}),
                       bool(method.redelivered))

    @_translated
    def ack(self, tag: int) -> None:
        assert self._channel is not None
        self._channel.basic_ack(tag)
        self._held.remove(tag)

    def close(self) -> None:
        """Return what is held one by one in the order taken (a quorum queue returns a
        multiple nack or a closed channel's messages in an order of its own), then close."""
        channel, self._channel = self._channel, None
        if channel is None or not channel.is_open:
            return
        try:
            with answered_within(channel.connection, self.timeout, "closing a reader"):
                for tag in self._held:
                    channel.basic_nack(tag, multiple=False, requeue=True)
                channel.close()
        except _LOST:
            pass  # the broker returns unacknowledged messages of a lost channel by itself


def properties_of(properties: pika.BasicProperties) -> dict[str, Any]:
    return {name: getattr(properties, name) for name in _PROPERTIES if getattr(properties, name) is not None}


class PikaDeadLetters:
    """`amqtask.deadletters.DeadLetterBroker` over one pika connection."""

    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        try:
            self._connection = pika.BlockingConnection(
                pika_parameters(broker, f"amqtask dead letters pid {os.getpid()}"))
        except (px.AMQPError, OSError) as exc:
            shown = ", ".join(u.redacted() for u in broker.urls)
            raise BrokerUnavailable(f"cannot connect to the broker at {shown}: {type(exc).__name__}") from None
        self._publisher: BlockingChannel | None = None
        self.timeout = broker.publish_timeout

    def __enter__(self) -> "PikaDeadLetters":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        close_within(self._connection, self.broker.connect_timeout)

    def _live_connection(self) -> pika.BlockingConnection:
        return self._connection

    @_translated
    def depth(self, queue: str) -> int | None:
        with self._channel() as channel:
            try:
                return int(channel.queue_declare(queue, passive=True).method.message_count)
            except px.ChannelClosedByBroker as exc:
                if exc.reply_code == NOT_FOUND:
                    return None
                raise BrokerError(f"cannot inspect queue {queue!r}: {exc.reply_code} {exc.reply_text}") from None

    @contextmanager
    def reader(self, queue: str) -> Iterator[PikaReader]:
        exists = self.depth(queue) is not None
        reader = PikaReader(self._open() if exists else None, queue, self.timeout)
        try:
            yield reader
        finally:
            reader.close()

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        channel = self._open()
        try:
            with answered_within(self._connection, self.timeout, f"taking the lock {name!r}"):
                channel.queue_declare(name, exclusive=True, auto_delete=True)
        except _LOST as exc:
            if not isinstance(exc, px.ChannelClosedByBroker):
                raise BrokerError(f"the connection to the broker was lost: {type(exc).__name__}") from None
            if exc.reply_code == RESOURCE_LOCKED:
                raise DeadLetterError(f"another requeue or purge is working on this dead-letter queue "
                                      f"(it holds {name!r}); try again when it has finished") from None
            raise BrokerError(f"cannot take the lock {name!r}: {exc.reply_code} {exc.reply_text}") from None
        try:
            yield
        finally:
            try:
                if channel.is_open:
                    with answered_within(self._connection, self.timeout, f"releasing the lock {name!r}"):
                        channel.queue_delete(name)
                        channel.close()
            except _LOST:
                pass  # an exclusive queue goes with its connection

    @_translated
    def ensure_queue(self, name: str) -> None:
        with self._channel() as channel:
            channel.queue_declare(name, durable=True)

    def publish(self, queue: str, message: Outgoing) -> None:
        """See DeadLetterBroker.publish. A confirm that does not come within
        publish_timeout ends the wait and the connection: the message may or may not
        be in the queue, and every letter taken on this connection goes back."""
        properties = pika.BasicProperties(headers=pika_headers(message.headers), **message.properties)
        try:
            self._send(queue, message.body, properties)
        except NoAnswer:
            raise PublishError(f"the broker did not confirm the message for queue {queue!r} within "
                               f"{self.timeout:g}s (publish_timeout)") from None

    @_translated
    def _send(self, queue: str, body: bytes, properties: pika.BasicProperties) -> None:
        channel = self._publish_channel()
        try:
            channel.basic_publish("", queue, body, properties, mandatory=True)
        except px.UnroutableError:
            raise UnroutableError("", queue) from None
        except px.NackError:
            raise NackError(f"the broker refused the message for queue {queue!r} "
                            "(nack: a full queue with overflow reject-publish?)") from None

    @_translated
    def delete_queue(self, name: str) -> None:
        with self._channel() as channel:
            channel.queue_delete(name)

    @_translated
    def purge(self, queue: str) -> int:
        with self._channel() as channel:
            return int(channel.queue_purge(queue).method.message_count)

    # -- channels ------------------------------------------------------------------
    def _open(self) -> BlockingChannel:
        try:
            return self._connection.channel()
        except (px.AMQPError, OSError) as exc:
            raise BrokerError(f"the connection to the broker was lost: {type(exc).__name__}") from None

    @contextmanager
    def _channel(self) -> Iterator[BlockingChannel]:
        channel = self._open()
        try:
            yield channel
        finally:
            if channel.is_open:
                channel.close()

    def _publish_channel(self) -> BlockingChannel:
        if self._publisher is None or not self._publisher.is_open:
            self._publisher = self._open()
            self._publisher.confirm_delivery()
        return self._publisher
