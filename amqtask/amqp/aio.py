"""The asyncio transport (aio-pika): publish with confirms from async code.

aio-pika's robust connection re-opens itself and its channels after a drop; a
publish that fails because the connection was down at that moment is retried
within publish_timeout.
"""
from __future__ import annotations

import asyncio
import logging
import time

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from typing import TYPE_CHECKING, Awaitable, Iterable, TypeVar

from ..errors import BrokerUnavailable, DeclareConflict, NackError, PublishError, UnroutableError
from ..protocol import WireMessage
from ..settings import BrokerSettings
from .params import aio_pika_url, ssl_context

if TYPE_CHECKING:
    from ..topology.model import Topology

log = logging.getLogger("amqtask.amqp")
T = TypeVar("T")


def aio_message(wire: WireMessage) -> aio_pika.Message:
    return aio_pika.Message(
        body=wire.body,
        headers=dict(wire.headers),
        content_type=wire.content_type,
        content_encoding=wire.content_encoding,
        delivery_mode=aio_pika.DeliveryMode(wire.delivery_mode),
        priority=wire.priority,
        correlation_id=wire.correlation_id,
        reply_to=wire.reply_to,
    )


class AsyncTransport:
    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._lock = asyncio.Lock()
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}  # of the current channel

    async def connect(self) -> AbstractRobustChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel  # the common case, without queueing on the lock behind other publishes
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            errors = []
            for url in self.broker.urls:
                try:
                    self._connection = await asyncio.wait_for(
                        aio_pika.connect_robust(
                            aio_pika_url(url, self.broker),
                            ssl_context=ssl_context(self.broker.tls) if url.tls else None,
                            client_properties={"connection_name": "amqtask-async"},
                        ),
                        timeout=self.broker.connect_timeout,
                    )
                    break
                except (asyncio.TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                    errors.append(f"{url.redacted()}: {type(exc).__name__} {exc}".strip())
            else:
                raise BrokerUnavailable("cannot connect to the broker: " + "; ".join(errors))
            self._channel = await self._connection.channel(
                publisher_confirms=self.broker.confirm_publish, on_return_raises=self.broker.confirm_publish
            )
            self._exchanges = {}
            return self._channel

    async def _exchange(self, channel: AbstractRobustChannel, name: str) -> aio_pika.abc.AbstractExchange:
        if not name:
            return channel.default_exchange
        exchange = self._exchanges.get(name)
        if exchange is None:  # no I/O: the exchange object of this (robust) channel
            exchange = self._exchanges[name] = await channel.get_exchange(name, ensure=False)
        return exchange

    async def publish(self, exchange: str, routing_key: str, wire: WireMessage, *, mandatory: bool = True) -> None:
        deadline = time.monotonic() + self.broker.publish_timeout
        attempt = 0
        while True:
            attempt += 1
            channel = await self.connect()
            try:
                target = await self._exchange(channel, exchange)
                confirmation = await asyncio.wait_for(
                    target.publish(aio_message(wire), routing_key, mandatory=mandatory),
                    timeout=max(0.1, deadline - time.monotonic()),
                )
            except aio_pika.exceptions.DeliveryError as exc:
                returned = exc.message
                if exc.frame is not None and isinstance(exc.frame, aiormq.spec.Basic.Return):
                    raise UnroutableError(exchange, routing_key, exc.frame.reply_text or "NO_ROUTE") from None
                if returned is not None:
                    raise UnroutableError(exchange, routing_key) from None
                raise NackError(f"the broker refused the message for {exchange or '(default)'!r}/{routing_key!r}") from None
            except asyncio.TimeoutError:
                raise PublishError(f"publish not confirmed within {self.broker.publish_timeout:g}s") from None
            except aiormq.exceptions.ChannelClosed as exc:
                self._channel = None
                raise PublishError(f"publish refused by the broker: {exc}") from None
            except (aiormq.exceptions.ConnectionClosed, ConnectionError, aiormq.exceptions.ChannelInvalidStateError) as exc:
                if attempt > self.broker.publish_retries or time.monotonic() >= deadline:
                    raise PublishError(f"publish failed after {attempt} attempts: {exc}") from None
                log.warning("connection lost during publish (%s); retrying", exc)
                await asyncio.sleep(min(0.2 * attempt, max(0.0, deadline - time.monotonic())))
                continue
            if isinstance(confirmation, aiormq.spec.Basic.Nack):
                raise NackError(f"the broker refused the message for {exchange or '(default)'!r}/{routing_key!r}")
            if isinstance(confirmation, aiormq.spec.Basic.Return):
                raise UnroutableError(exchange, routing_key, confirmation.reply_text or "NO_ROUTE")
            return

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await connection.close()


async def declare_topology(channel: aio_pika.abc.AbstractChannel, topology: "Topology",
                           queues: "Iterable[str] | None" = None) -> "dict[str, aio_pika.abc.AbstractQueue]":
    """Declare exchanges, the given queues (all when None) and their bindings on a
    (robust) channel, which re-declares them by itself after a reconnect.
    A 406 conflict raises DeclareConflict naming the object. Returns the declared
    queue objects: consume through these, so the robust channel restores consumers."""
    wanted = set(topology.queues) if queues is None else set(queues)
    exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
    for x in topology.exchanges.values():
        exchanges[x.name] = await _declaring(
            "exchange", x.name,
            channel.declare_exchange(x.name, aio_pika.ExchangeType(x.type), durable=x.durable,
                                     auto_delete=x.auto_delete, internal=x.internal,
                                     arguments=x.declare_arguments() or None),
        )
    declared: dict[str, aio_pika.abc.AbstractQueue] = {}
    for q in topology.queues.values():
        if q.name in wanted:
            declared[q.name] = await _declaring(
                "queue", q.name,
                channel.declare_queue(q.name, durable=q.durable, exclusive=q.exclusive, auto_delete=q.auto_delete,
                                      arguments=dict(q.arguments) or None),
            )
    for b in topology.bindings:
        args = dict(b.arguments) or None
        if b.to_exchange:
            if b.destination in exchanges and b.source in exchanges:
                await exchanges[b.destination].bind(exchanges[b.source], b.routing_key, arguments=args)
        elif b.destination in declared:
            await declared[b.destination].bind(b.source, b.routing_key, arguments=args)
    return declared


async def _declaring(kind: str, name: str, declaration: "Awaitable[T]") -> "T":
    try:
        return await declaration
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise DeclareConflict(kind, name, str(exc)) from None
