"""Confirmed publishing from asyncio code (aiormq).

`AsyncPublisher` is what `delay_async()` uses: one connection (opened on first use,
trying each broker URL) and one confirm channel; every publish waits for the
broker's confirm within publish_timeout; a publish that fails because the
connection dropped is retried on a new one, at most publish_retries times.

`AmqpPublishPort` is the worker's: results, retries, parked messages, chain steps
and dead letters. It has a connection of its own: RabbitMQ blocks every
connection that publishes while a memory or disk alarm lasts, acknowledgements
included, and on a separate connection the consumer keeps acking meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import aiormq
import aiormq.abc
from pamqp import commands as spec

from ..brokerurl import BrokerURL
from ..errors import BrokerUnavailable, DeclareConflict, NackError, PublishError, UnroutableError
from ..metrics import NullMetrics
from ..protocol import WireMessage
from ..settings import BrokerSettings
from ..topology.model import Topology
from ..worker import delays
from .connection import CONNECTION_ERRORS, connected_url, declare, open_connection, properties

log = logging.getLogger("amqtask.amqp")


class AsyncPublisher:
    def __init__(self, broker: BrokerSettings, *, name: str, metrics: NullMetrics | None = None) -> None:
        self.broker = broker
        self.name = name
        self.metrics = metrics or NullMetrics()
        self.confirmed = 0
        self.refused = 0
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._pid = os.getpid()
        self._after: BrokerURL | None = None  # the node that failed last: the next connection starts after it
        self._closing: set[asyncio.Future] = set()
        self._old_channels: set[asyncio.Future] = set()  # forgotten after a nack, closed a little later

    async def publish(self, exchange: str, routing_key: str, message: WireMessage, *,
                      mandatory: bool = True) -> None:
        deadline = time.monotonic() + self.broker.publish_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._publish_once(exchange, routing_key, message, mandatory, deadline)
                self.confirmed += 1
                self.metrics.publish_confirmed()
                return
            except UnroutableError:
                self.refused += 1
                self.metrics.publish_returned()
                raise
            except NackError:
                # Sent again on a new channel (see BlockingTransport._with_retries: RabbitMQ 3.10
                # nacks every publish of a channel caught in a quorum leader change for as long
                # as the channel lives); a full queue with reject-publish still raises.
                self.metrics.publish_nacked()
                self._forget_channel()
                if attempt > self.broker.publish_retries or time.monotonic() >= deadline:
                    self.refused += 1
                    raise
                log.warning("publish to %r/%r nacked by the broker; sending it again on a new channel",
                            exchange, routing_key)
                await asyncio.sleep(min(0.2 * attempt, max(0.0, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                # A silent connection (a partition, a node gone without a word) is not used
                # again: the next publish connects anew, trying the next node first.
                self._drop()
                raise PublishError(f"publish not confirmed within {self.broker.publish_timeout:g}s") from None
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                self._channel = None
                if attempt > 1 or not await self._restore_topology(exc):
                    raise NackError(f"refused by the broker: {exc}") from None
            except aiormq.exceptions.ChannelClosed as exc:  # access refused, a precondition...
                self._channel = None
                raise NackError(f"refused by the broker: {exc}") from None
            except (BrokerUnavailable, *CONNECTION_ERRORS) as exc:
                self._drop()
                if attempt > self.broker.publish_retries or time.monotonic() >= deadline:
                    raise PublishError(f"publish failed after {attempt} attempts: {type(exc).__name__} {exc}"
                                       ) from None
                await asyncio.sleep(min(0.2 * attempt, max(0.0, deadline - time.monotonic())))

    async def _publish_once(self, exchange: str, routing_key: str, message: WireMessage, mandatory: bool,
                            deadline: float) -> None:
        remaining = max(0.05, deadline - time.monotonic())
        channel = await asyncio.wait_for(self._open(), remaining)
        remaining = max(0.05, deadline - time.monotonic())
        try:
            result = await channel.basic_publish(message.body, exchange=exchange, routing_key=routing_key,
                                                 properties=properties(message), mandatory=mandatory,
                                                 timeout=remaining)
        except aiormq.exceptions.DeliveryError as exc:
            # aiormq reports a broker nack as this error: a refusal, not a broken
            # connection, so never sent again (the next try would only duplicate it).
            if not isinstance(exc.frame, spec.Basic.Nack):
                raise
            result = exc.frame
        if isinstance(result, spec.Basic.Nack):
            raise NackError(f"the broker refused the message for {exchange or '(default)'!r}/{routing_key!r}")
        if isinstance(result, aiormq.abc.DeliveredMessage):  # returned: no queue bound for it
            reply = getattr(result.delivery, "reply_text", None) or "NO_ROUTE"
            raise UnroutableError(exchange, routing_key, reply)

    async def _restore_topology(self, exc: Exception) -> bool:
        """A publish named an exchange the broker does not have; True when it was
        declared again and the publish is worth one more try."""
        return False

    async def _open(self) -> aiormq.abc.AbstractChannel:
        if self._pid != os.getpid():  # a forked child: the parent's connection is not ours to use
            self._pid, self._connection, self._channel, self._lock = os.getpid(), None, None, asyncio.Lock()
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            if self._connection is None or self._connection.is_closed:
                if self._connection is not None:  # it broke under us: begin with the next node
                    self._after = connected_url(self._connection, self.broker) or self._after
                self._connection = await open_connection(self.broker, self.name, after=self._after)
            # A channel the broker closed (an error on it) leaves the connection usable.
            self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=False)
            return self._channel

    def _forget_channel(self) -> None:
        """Publish on a new channel from now on. The old one is closed in the
        background a little later, so the confirms still in flight on it arrive."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            task = asyncio.ensure_future(self._close_channel_later(channel))
            self._old_channels.add(task)
            task.add_done_callback(self._old_channels.discard)

    async def _close_channel_later(self, channel: aiormq.abc.AbstractChannel) -> None:
        try:
            await asyncio.sleep(self.broker.publish_timeout)
            await asyncio.wait_for(channel.close(), 5)
        except (asyncio.CancelledError, *CONNECTION_ERRORS):
            pass

    def _drop(self) -> None:
        """Stop using the connection after a failure on it; it is closed in the
        background (a silent peer must not hold up the retry), and the next one is
        opened starting with the node after it."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is None:
            return
        self._after = connected_url(connection, self.broker) or self._after
        if not connection.is_closed:
            task = asyncio.ensure_future(self._close_quietly(connection))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(connection: aiormq.abc.AbstractConnection) -> None:
        try:
            await asyncio.wait_for(connection.close(), 5)
        except (asyncio.CancelledError, *CONNECTION_ERRORS):
            pass

    async def close(self) -> None:
        for task in list(self._old_channels):  # they close with the connection
            task.cancel()
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 5)
            except CONNECTION_ERRORS:
                pass


class AmqpPublishPort(AsyncPublisher):
    """The worker's `PublishPort` over RabbitMQ. `topology` is routing.yaml's
    (dead-letter exchanges); `plan` is what the worker declared (the delay cascade,
    `.dead` queues), declared again if the broker lost part of it."""

    def __init__(self, broker: BrokerSettings, topology: Topology, plan: Topology, *, name: str,
                 metrics: NullMetrics | None = None) -> None:
        super().__init__(broker, name=f"{name} publisher", metrics=metrics)
        self.topology = topology
        self.plan = plan

    async def _restore_topology(self, exc: Exception) -> bool:
        log.warning("the broker lost part of the worker's topology (%s); declaring it again", exc)
        await self._redeclare()
        return True

    async def park(self, queue: str, message: WireMessage, delay: float) -> None:
        exchange, key = delays.cascade_for(queue, self.topology).park_route(delay, queue)
        await self.publish(exchange, key, message)

    async def dead_letter(self, queue: str, message: WireMessage, *, routing_key: str = "") -> None:
        spec_ = self.topology.queues.get(queue)
        if spec_ is not None and spec_.dead_letter_exchange is not None:
            key = str(spec_.arguments.get("x-dead-letter-routing-key", routing_key))
            try:
                await self.publish(spec_.dead_letter_exchange, key, message)
                return
            except UnroutableError:
                log.error("dead-letter exchange %r routes %r nowhere; using %s.dead",
                          spec_.dead_letter_exchange, key, queue)
        try:
            await self.publish("", f"{queue}.dead", message)
        except UnroutableError:
            # Not declared yet (the dead-letter exchange's fallback) or deleted since by
            # an operator: declared (again), so what the worker keeps is not lost.
            log.warning("%s.dead does not exist; declaring it", queue)
            await self._declare_dead_queue(queue)
            await self.publish("", f"{queue}.dead", message)

    async def _declare_dead_queue(self, queue: str) -> None:
        dead = delays.dead_letter_queue_for(queue, self.topology)
        if dead.name not in self.plan.queues:
            self.plan = Topology.build(self.plan.exchanges.values(), [*self.plan.queues.values(), dead],
                                       self.plan.bindings)
        try:
            await asyncio.wait_for(self._declare_queue(dead.name), self.broker.publish_timeout)
        except (DeclareConflict, aiormq.exceptions.ChannelClosed) as exc:  # refused: asking again will not help
            self._channel = None
            raise NackError(f"{dead.name} cannot be declared: {exc}") from None
        except (BrokerUnavailable, *CONNECTION_ERRORS) as exc:
            self._drop()
            raise PublishError(f"{dead.name} could not be declared: {type(exc).__name__} {exc}") from None

    async def _declare_queue(self, name: str) -> None:
        await declare(await self._open(), self.plan, queues=[name])

    async def _redeclare(self) -> None:
        channel = await self._open()
        await declare(channel, self.plan)
