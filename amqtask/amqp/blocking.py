"""The blocking transport (pika): publish with confirms, declare, purge, inspect.

One connection and one channel per transport, guarded by a lock so that a web
app's request threads can share it. Every wait is bounded by the settings'
timeouts (connect_timeout to connect, publish_timeout for any answer, a confirm
included, see answered_within); a connection that dropped since the last call is
re-opened transparently and the publish retried (at-least-once: a publish whose
confirm was lost with the connection may reach the broker twice).
"""
from __future__ import annotations

import decimal
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TypeVar

import pika
import pika.exceptions as px
from pika.adapters.blocking_connection import BlockingChannel

from ..errors import BrokerError, BrokerUnavailable, DeclareConflict, NackError, PublishError, UnroutableError
from ..forks import start_afresh_after_fork
from ..protocol import WireMessage
from ..settings import BrokerSettings
from ..topology.model import Exchange, Queue, Topology
from .params import close_quietly, pika_parameters

log = logging.getLogger("amqtask.amqp")
T = TypeVar("T")

# Errors after which the connection is unusable and worth re-opening.
CONNECTION_ERRORS = (
    px.AMQPConnectionError,
    px.ConnectionWrongStateError,
    px.ChannelWrongStateError,
    px.StreamLostError,
    ConnectionError,
    OSError,
)


class BrokerSilent(px.AMQPConnectionError):
    """The broker did not answer in time (a partition, a hung or blocked node); the
    connection was torn down."""


@contextmanager
def answered_within(connection: pika.BlockingConnection, seconds: float, what: str) -> Iterator[None]:
    """Bound every wait for the broker inside the block: after `seconds`, the
    connection is torn down and the wait raises BrokerSilent.

    pika's blocking calls wait for their answer (a confirm, a declare-ok, a
    close-ok) until a heartbeat is missed: minutes on a silent broker. Its public
    timers fire only in process_data_events, never inside those waits, so this
    arms the timer its own blocked-connection timeout uses, which tears the
    stream down the same way."""
    impl = connection._impl  # noqa: SLF001 - see above
    timer = impl._adapter_call_later(max(seconds, 0.0), lambda: impl._terminate_stream(BrokerSilent(
        f"no answer from the broker to {what} within {seconds:g}s")))
    try:
        yield
    finally:
        impl._adapter_remove_timeout(timer)


def close_within(connection: pika.BlockingConnection | None, seconds: float) -> None:
    """close_quietly, waiting for a silent broker's close-ok `seconds` at most."""
    if connection is None or not connection.is_open:
        return
    with answered_within(connection, seconds, "close"):
        close_quietly(connection)


@dataclass(frozen=True)
class QueueStats:
    name: str
    messages: int
    consumers: int


def pika_header_value(value: Any) -> Any:
    """pika cannot encode floats in a field table; send whole numbers as integers and
    others as decimals (both are AMQP types every client reads)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else decimal.Decimal(repr(value))
    if isinstance(value, dict):
        return {k: pika_header_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [pika_header_value(v) for v in value]
    return value


_PIKA_NATIVE = frozenset({str, int, bool, bytes, type(None)})


def pika_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A header table pika can encode (see pika_header_value); most values pass as they are."""
    return {k: v if type(v) in _PIKA_NATIVE else pika_header_value(v) for k, v in headers.items()}


def wire_properties(wire: WireMessage) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=wire.content_type,
        content_encoding=wire.content_encoding,
        headers=pika_headers(wire.headers),
        delivery_mode=wire.delivery_mode,
        priority=wire.priority,
        correlation_id=wire.correlation_id,
        reply_to=wire.reply_to,
    )


class BlockingTransport:
    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        self.after_fork()
        start_afresh_after_fork(self)

    def after_fork(self) -> None:
        """A connection and lock of this process's own (at creation, and in a forked
        child: the socket is the parent's, and closing it here would send a Close
        frame on the parent's connection; the lock may have been held by a thread
        that does not exist in the child)."""
        self._lock = threading.RLock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    # -- connection --------------------------------------------------------------
    def _attempt(self, operation: Callable[[BlockingChannel], T], what: str, deadline: float) -> T:
        """`operation` on a live channel (connecting first if need be, within
        connect_timeout); every answer it waits for, opening the channel included,
        comes by `deadline` or the connection is dropped (BrokerSilent)."""
        if self._connection is None or not self._connection.is_open:
            self._connection, self._channel = self._connect(), None
        with answered_within(self._connection, deadline - time.monotonic(), what):
            return operation(self._live_channel(self._connection))

    def _live_channel(self, connection: pika.BlockingConnection) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self._channel = connection.channel()
            if self.broker.confirm_publish:
                self._channel.confirm_delivery()
        return self._channel

    def _answer_deadline(self) -> float:
        return time.monotonic() + self.broker.publish_timeout

    def _connect(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(pika_parameters(self.broker, f"amqtask publisher pid {os.getpid()}"))
        except (px.AMQPError, OSError) as exc:
            shown = ", ".join(u.redacted() for u in self.broker.urls)
            raise BrokerUnavailable(f"cannot connect to the broker at {shown}: {_describe(exc)}") from None

    def _drop_channel(self) -> None:
        """Publish on a new channel from the next attempt on."""
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except (px.AMQPError, OSError):  # it goes with the connection anyway
                pass

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        close_within(connection, self.broker.connect_timeout)

    def close(self) -> None:
        with self._lock:
            self._reset()

    def __enter__(self) -> "BlockingTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_retries(self, operation: Callable[[BlockingChannel], T], what: str) -> T:
        """Run `operation` on a live channel, re-opening the connection when it broke,
        at most publish_retries + 1 times and within publish_timeout."""
        deadline = self._answer_deadline()
        attempt = 0
        with self._lock:
            while True:
                attempt += 1
                try:
                    return self._attempt(operation, what, deadline)
                except BrokerSilent:
                    self._reset()
                    raise PublishError(
                        f"{what} not confirmed within {self.broker.publish_timeout:g}s (broker.publish_timeout): "
                        "no answer from the broker (a network partition, a hung node, or a memory or disk alarm)"
                    ) from None
                except BrokerUnavailable:
                    self._reset()
                    if attempt > self.broker.publish_retries or time.monotonic() >= deadline:
                        raise
                except NackError:
                    # Sent again on a new channel: RabbitMQ 3.10 nacks every publish of a channel
                    # whose first publish to a quorum queue came while the queue's record still
                    # named a dead leader, for as long as that channel lives; a new channel a moment
                    # later is taken. A nack means the broker did not take the message, so this
                    # cannot duplicate it (unless the route reaches several queues and only some
                    # refused). A full queue with reject-publish still raises, after the retries.
                    self._drop_channel()
                    if attempt > self.broker.publish_retries or time.monotonic() >= deadline:
                        raise
                    log.warning("%s nacked by the broker; sending it again on a new channel", what)
                except px.ChannelClosedByBroker as exc:
                    self._channel = None
                    raise PublishError(f"{what} refused by the broker: {exc.reply_code} {exc.reply_text}") from None
                except px.ConnectionBlockedTimeout:
                    self._reset()
                    raise PublishError(
                        f"{what} failed: the broker blocked the connection for more than "
                        f"{self.broker.publish_timeout:g}s (a memory or disk alarm)"
                    ) from None
                except CONNECTION_ERRORS as exc:
                    self._reset()
                    if attempt > self.broker.publish_retries or time.monotonic() >= deadline:
                        raise PublishError(f"{what} failed after {attempt} attempts: {_describe(exc)}") from None
                    log.warning("connection lost during %s (%s); reconnecting", what, _describe(exc))
                time.sleep(min(0.2 * attempt, max(0.0, deadline - time.monotonic())))

    # -- operations --------------------------------------------------------------
    def publish(self, exchange: str, routing_key: str, wire: WireMessage, *, mandatory: bool = True) -> None:
        """Publish and, with confirms on, wait until the broker has taken responsibility.

        Raises UnroutableError when the broker returns the message (mandatory),
        NackError when it refuses it, PublishError when it cannot be confirmed in time.
        """
        properties = wire_properties(wire)

        def send(channel: BlockingChannel) -> None:
            try:
                channel.basic_publish(exchange, routing_key, wire.body, properties, mandatory=mandatory)
            except px.UnroutableError as exc:
                text = exc.messages[0].method.reply_text if exc.messages else "NO_ROUTE"
                raise UnroutableError(exchange, routing_key, text) from None
            except px.NackError:
                raise NackError(
                    f"the broker refused the message for exchange {exchange or '(default)'!r} "
                    f"routing key {routing_key!r} (nack: a full queue with overflow reject-publish?)"
                ) from None

        self._with_retries(send, "publish")

    def declare(self, topology: Topology, queues: list[str] | None = None) -> list[DeclareConflict]:
        """Declare exchanges, queues and bindings (only `queues` and what they need,
        when given). Returns the conflicts found; everything else is declared."""
        conflicts: list[DeclareConflict] = []
        wanted = set(topology.queues) if queues is None else set(queues)
        with self._lock:
            for exchange in topology.exchanges.values():
                self._declare_one(conflicts, "exchange", exchange.name, lambda ch, x=exchange: _declare_exchange(ch, x))
            for queue in topology.queues.values():
                if queue.name in wanted:
                    self._declare_one(conflicts, "queue", queue.name, lambda ch, q=queue: _declare_queue(ch, q))
            for b in topology.bindings:
                if not b.to_exchange and b.destination not in wanted:
                    continue
                if b.to_exchange:
                    op = lambda ch, b=b: ch.exchange_bind(b.destination, b.source, b.routing_key, dict(b.arguments) or None)  # noqa: E731
                else:
                    op = lambda ch, b=b: ch.queue_bind(b.destination, b.source, b.routing_key, dict(b.arguments) or None)  # noqa: E731
                self._declare_one(conflicts, "binding", f"{b.source} -> {b.destination} ({b.routing_key})", op)
        return conflicts

    def _declare_one(self, conflicts: list[DeclareConflict], kind: str, name: str,
                     op: Callable[[BlockingChannel], object]) -> None:
        try:
            self._attempt(op, f"the declare of {kind} {name!r}", self._answer_deadline())
        except px.ChannelClosedByBroker as exc:
            self._channel = None
            conflicts.append(DeclareConflict(kind, name, f"{exc.reply_code} {exc.reply_text}"))
        except CONNECTION_ERRORS as exc:
            self._reset()
            raise BrokerError(f"connection lost while declaring {kind} {name!r}: {_describe(exc)}") from None

    def purge(self, queue: str) -> int:
        def run(channel: BlockingChannel) -> int:
            return channel.queue_purge(queue).method.message_count

        return self._with_retries(run, f"purge of {queue!r}")

    def queue_stats(self, queue: str) -> QueueStats | None:
        """Message and consumer counts, or None when the queue does not exist."""
        ok = self._passive(lambda ch: ch.queue_declare(queue, passive=True), f"queue {queue!r}")
        return None if ok is None else QueueStats(queue, ok.method.message_count, ok.method.consumer_count)

    def delete_queue(self, queue: str, *, if_empty: bool = False) -> None:
        """Delete a queue; with `if_empty`, the broker refuses (PublishError) when it holds messages."""
        self._with_retries(lambda ch: ch.queue_delete(queue, if_empty=if_empty), f"delete of queue {queue!r}")

    def exchange_exists(self, exchange: str) -> bool:
        """A passive declare: True when the exchange exists (nothing is created)."""
        return self._passive(lambda ch: ch.exchange_declare(exchange, passive=True), f"exchange {exchange!r}") is not None

    def _passive(self, declare: Callable[[BlockingChannel], Any], what: str) -> Any:
        """A passive declare's answer, or None when the broker says 404 (nothing is created)."""
        with self._lock:
            try:
                return self._attempt(declare, f"inspecting {what}", self._answer_deadline())
            except px.ChannelClosedByBroker as exc:
                self._channel = None
                if exc.reply_code == 404:
                    return None
                raise BrokerError(f"cannot inspect {what}: {exc.reply_text}") from None
            except CONNECTION_ERRORS as exc:
                self._reset()
                raise BrokerError(f"connection lost while inspecting {what}: {_describe(exc)}") from None

    def delete_exchange(self, exchange: str) -> None:
        self._with_retries(lambda ch: ch.exchange_delete(exchange), f"delete of exchange {exchange!r}")


def _declare_exchange(channel: BlockingChannel, x: Exchange) -> None:
    channel.exchange_declare(
        x.name, x.type, durable=x.durable, auto_delete=x.auto_delete, internal=x.internal,
        arguments=x.declare_arguments() or None,
    )


def _declare_queue(channel: BlockingChannel, q: Queue) -> None:
    channel.queue_declare(
        q.name, durable=q.durable, exclusive=q.exclusive, auto_delete=q.auto_delete, arguments=dict(q.arguments) or None
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
