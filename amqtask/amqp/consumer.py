"""The worker's consumer on RabbitMQ (pika's asyncio connection: see
amqp/pika_asyncio.py for why): it connects (trying each broker URL), declares what
the worker consumes, sets per-consumer QoS, consumes with manual acks, turns each
message into a `Delivery` once, and coalesces acks. A lost connection is
opened again with backoff, the topology declared again and the consumers
restored; a channel the broker closes alone gets a new one on the same
connection, restored the same way (both count as a reconnect); a consumer the
broker cancels (its queue was deleted) is declared and consumed again. The
prefetch window can change at run time (`set_prefetch`). It decides nothing about
messages: that is the handler's job.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

import pika

from ..delivery import Delivery, Settle
from ..metrics import NullMetrics
from ..settings import BrokerSettings
from ..topology.model import Topology
from .acks import AckBatcher
from .connection import CONNECTION_ERRORS, connected_url, declare
from .pika_asyncio import PikaChannel, PikaConnection, connect, wire_message

log = logging.getLogger("amqtask.worker")
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # then every 8 s, each with up to 25% jitter


@dataclass(frozen=True)
class ConsumerConfig:
    queues: tuple[str, ...]
    prefetch: int  # per consumer; 0 is unlimited
    slots: int  # pool slots: acks are held back while at least this much work is in hand
    name: str  # shown in the broker's connection list
    purge: bool = False


class AmqpConsumer:
    def __init__(self, broker: BrokerSettings, plan: Topology, config: ConsumerConfig,
                 deliver: Callable[[Delivery], Awaitable[None]], *, metrics: NullMetrics | None = None) -> None:
        self.broker = broker
        self.plan = plan
        self.config = config
        self.consuming = False
        self.queues = list(config.queues)  # add_queue / cancel_queue change it at run time
        self.reconnects = 0
        self.acks_lost = 0
        self._deliver = deliver
        self.metrics = metrics or NullMetrics()
        self._connection: PikaConnection | None = None
        self._channel: PikaChannel | None = None
        self._batcher: AckBatcher | None = None
        self._consumers: dict[str, str] = {}  # consumer tag -> queue
        self._closing = False
        self._supervisor: asyncio.Task | None = None
        self._purged = False
        self._background: set[asyncio.Future] = set()
        self._window_lock = asyncio.Lock()  # a channel set up, or a window changed, one at a time

    @property
    def prefetch(self) -> int:
        """The prefetch window per consumer in force (0: unlimited)."""
        return self.config.prefetch

    # -- life cycle --------------------------------------------------------------
    async def start(self) -> None:
        """Connect, declare and consume. BrokerUnavailable or DeclareConflict when
        the worker cannot start at all."""
        self._connection = await connect(self.broker, self.config.name)
        try:
            await self._setup(self._connection)
        except BaseException:
            await self._close_connection()
            raise
        self._supervisor = asyncio.create_task(self._supervise())

    async def stop_consuming(self) -> None:
        """Stop deliveries (warm shutdown); what was delivered can still be settled."""
        self.consuming = False
        channel = self._channel
        for tag in list(self._consumers):
            try:
                if channel is not None and not channel.is_closed:
                    await asyncio.wait_for(channel.basic_cancel(tag), 5)
            except CONNECTION_ERRORS:
                pass  # the channel is gone: the broker has stopped delivering anyway
        self._consumers.clear()

    async def close(self) -> None:
        """Send the acks still held back, then close (the broker requeues whatever
        is left unacknowledged)."""
        self._closing = True
        self.consuming = False
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._batcher is not None and self._channel is not None and not self._channel.is_closed:
            try:
                await asyncio.wait_for(self._batcher.drain(), 5)
            except CONNECTION_ERRORS:
                pass  # the broker redelivers what was not acked
        await self._close_connection()

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await _close_quietly(connection)

    # -- connecting ----------------------------------------------------------------
    async def _setup(self, connection: PikaConnection) -> None:
        async with self._window_lock:  # so a window changed meanwhile is the one the new consumers get
            await self._setup_channel(connection)

    async def _setup_channel(self, connection: PikaConnection) -> None:
        channel = await connection.channel()
        # Handlers of its deliveries stop when it closes: they cannot settle them on
        # another channel, and the broker delivers them again.
        channel.closing.add_done_callback(lambda _: _cancel_handlers(channel))
        await declare(channel, self.plan)
        if self.config.purge and not self._purged:
            for queue in self.queues:
                purged = await channel.queue_purge(queue)
                log.info("purged %s messages from %s", purged.message_count, queue)
            self._purged = True
        # Per-consumer QoS (global=False), so quorum queues accept it.
        await channel.basic_qos(prefetch_count=self.config.prefetch, global_=False)
        batcher = AckBatcher(channel, self._ack_lost, window=self.config.prefetch, slots=self.config.slots,
                             on_sent=self.metrics.acks_sent)
        self.metrics.set_prefetch_window(self.config.prefetch * len(self.queues))
        channel.on_consumer_cancel_callbacks.add(self._on_cancelled)
        self._channel, self._batcher = channel, batcher
        self._consumers.clear()
        for queue in self.queues:
            await self._consume(channel, batcher, queue)
        self.consuming = True
        log.info("consuming from %s", ", ".join(self.queues))

    async def _consume(self, channel: PikaChannel, batcher: AckBatcher, queue: str) -> None:
        def on_message(_: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
            self._on_message(channel, batcher, queue, method, properties, body)

        ok = await channel.basic_consume(queue, on_message)
        self._consumers[ok.consumer_tag] = queue

    async def _supervise(self) -> None:
        """Wait for the channel or the connection to drop; then open them again, with
        backoff, until the worker stops. A channel the broker closed alone (its
        consumer_timeout, a 406 on an ack) leaves the connection open: a new channel
        on it is enough."""
        while not self._closing:
            channel_only = await self._wait_for_loss()
            if self._closing:
                return
            self.consuming = False
            if channel_only and await self._reopen_channel():
                continue
            log.warning("connection to the broker lost; reconnecting")
            await self._reconnect()

    async def _wait_for_loss(self) -> bool:
        """Wait until the channel or the connection closes; True when the connection
        is still open (only the channel was lost)."""
        connection, channel = self._connection, self._channel
        if connection is None:
            return False
        watched = {connection.closing, *([channel.closing] if channel is not None else [])}
        # asyncio.wait only observes them; a cancellation here (the supervisor stopping) propagates.
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        return not connection.is_closed

    async def _reopen_channel(self) -> bool:
        """Open a new channel on the connection still open and restore QoS and the
        consumers on it; the deliveries of the closed channel are the broker's again
        (it redelivers them), and their handlers cannot settle them on the new one.
        False when that failed (the whole connection is then opened again)."""
        connection = self._connection
        assert connection is not None
        reason = _close_reason(self._channel)
        log.warning("the broker closed the consuming channel (%s); opening a new one", reason)
        try:
            await self._setup(connection)
        except Exception as exc:  # noqa: BLE001 - the connection may be going too: reconnect
            log.error("could not restore the consumers on a new channel: %s", exc)
            await _close_quietly(connection)
            return False
        self._count_reconnect("new channel; consumers restored")
        return True

    async def _reconnect(self) -> None:
        # The node just lost is tried last, not first: on a cluster, a node that went
        # silent (partitioned) would otherwise cost a connect timeout on every attempt.
        after = connected_url(self._connection, self.broker) if self._connection is not None else None
        for attempt in itertools.count():
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            await asyncio.sleep(delay * (1 + random.random() / 4))
            if self._closing:
                return
            try:
                connection = await connect(self.broker, self.config.name, after=after)
            except Exception as exc:  # noqa: BLE001 - BrokerUnavailable or a protocol error: try again
                log.warning("reconnect attempt %d failed: %s", attempt + 1, exc)
                continue
            try:
                await self._setup(connection)
            except Exception as exc:  # noqa: BLE001 - a declare refused now may pass later
                log.error("reconnected, but could not restore the consumers: %s", exc)
                after = connected_url(connection, self.broker) or after
                await _close_quietly(connection)
                continue
            self._connection = connection
            self._count_reconnect("reconnected to the broker; consumers restored")
            return

    def _count_reconnect(self, what: str) -> None:
        self.reconnects += 1
        self.metrics.reconnected()
        log.info("%s (reconnect %d)", what, self.reconnects)

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled a consumer: its queue was deleted. Declare it again
        and consume again, on the same channel. (In a task of its own: this runs in
        the channel's frame reader, which must keep reading the replies.)"""
        queue = self._consumers.pop(frame.consumer_tag, None)
        if queue is not None and not self._closing:
            restore = asyncio.ensure_future(self._restore(queue))
            self._background.add(restore)
            restore.add_done_callback(self._background.discard)

    async def _restore(self, queue: str) -> None:
        channel, batcher = self._channel, self._batcher
        if channel is None or batcher is None or channel.is_closed:
            return  # the reconnect restores every consumer
        log.error("queue %s disappeared (deleted on the broker); declaring it again", queue)
        try:
            await declare(channel, self.plan)
            await self._consume(channel, batcher, queue)
        except Exception as exc:  # noqa: BLE001 - reported; the next reconnect tries again
            log.error("could not restore the consumer of %s: %s", queue, exc)

    async def add_queue(self, queue: str, plan: Topology) -> None:
        """Start consuming `queue` (remote control's add_consumer); `plan` is what the
        worker declares now, the queue and its bindings included."""
        self.plan = plan
        if queue in self.queues:
            return
        self.queues.append(queue)
        channel, batcher = self._channel, self._batcher
        if channel is not None and batcher is not None and not channel.is_closed:
            await declare(channel, plan)
            await self._consume(channel, batcher, queue)
            log.info("now consuming from %s too", queue)

    async def cancel_queue(self, queue: str) -> None:
        """Stop consuming `queue` (remote control's cancel_consumer); what it delivered
        can still be settled."""
        if queue in self.queues:
            self.queues.remove(queue)
        channel = self._channel
        for tag, consumed in list(self._consumers.items()):
            if consumed == queue:
                del self._consumers[tag]
                if channel is not None and not channel.is_closed:
                    await channel.basic_cancel(tag)
        log.info("no longer consuming from %s", queue)

    async def set_prefetch(self, prefetch: int, *, slots: int) -> None:
        """Change the prefetch window per consumer (0: unlimited) and the pool slots
        the ack batcher holds acks for (pool_grow, pool_shrink, autoscale).

        RabbitMQ applies a per-consumer basic.qos only to consumers created after it,
        so each queue is consumed anew on the same channel: basic.qos, then basic.cancel
        and basic.consume per queue. Deliveries already in hand stay valid (same
        channel) but are not counted in the new consumer's window, so until they are
        settled the worker may hold the old window and the new one. A channel being
        replaced (reconnect) gets the new window when it is set up."""
        async with self._window_lock:
            if (prefetch, slots) == (self.config.prefetch, self.config.slots):
                return
            self.config = replace(self.config, prefetch=prefetch, slots=slots)
            channel, batcher = self._channel, self._batcher
            if channel is None or batcher is None or channel.is_closed or not self.consuming:
                return
            batcher.resize(window=prefetch, slots=slots)
            try:
                await channel.basic_qos(prefetch_count=prefetch, global_=False)
                for tag, queue in list(self._consumers.items()):
                    await self._consume_again(channel, batcher, tag, queue)
            except CONNECTION_ERRORS as exc:
                log.warning("prefetch window not changed on this channel (%s); the next one gets %d", exc, prefetch)
                return
            self.metrics.set_prefetch_window(prefetch * len(self.queues))
            log.info("prefetch window now %d per queue", prefetch)

    async def _consume_again(self, channel: PikaChannel, batcher: AckBatcher, tag: str, queue: str) -> None:
        """Cancel consumer `tag` and consume its queue again (with the QoS now in force),
        unless the queue was given up meanwhile (cancel_consumer, a warm shutdown)."""
        if self._consumers.pop(tag, None) is None:
            return
        await channel.basic_cancel(tag)  # pika returns what was in flight for it to the queue
        if queue in self.queues and self.consuming:
            await self._consume(channel, batcher, queue)

    # -- deliveries ------------------------------------------------------------------
    def _on_message(self, channel: PikaChannel, batcher: AckBatcher, queue: str, method: Any,
                    properties: pika.BasicProperties, body: bytes) -> None:
        """Turn the message into a Delivery and hand it to the handler in a task of its
        own, cancelled if the channel closes meanwhile (the broker, which requeued the
        message with the channel, delivers it again)."""
        tag = method.delivery_tag
        batcher.delivered(tag)

        def settle(outcome: Settle) -> bool:
            if channel.is_closed:
                self.acks_lost += 1
                log.warning("could not settle message %s: its channel is gone; the broker will redeliver it",
                            properties.correlation_id)
                return False
            if outcome is Settle.ACK:
                batcher.ack(tag)
            else:
                batcher.nack(tag, requeue=outcome is Settle.REQUEUE)
            return True

        delivery = Delivery(wire_message(properties, body), queue, settle, exchange=method.exchange or "",
                            routing_key=method.routing_key or "", redelivered=bool(method.redelivered),
                            alive=lambda: not channel.is_closed)
        task = asyncio.ensure_future(self._deliver(delivery))
        channel.tasks.add(task)
        task.add_done_callback(channel.tasks.discard)

    def _ack_lost(self, tag: int) -> None:
        self.acks_lost += 1


async def _close_quietly(connection: PikaConnection) -> None:
    """Close a connection that may be broken already (closing a closed one is a no-op)."""
    try:
        await connection.close()
    except CONNECTION_ERRORS:
        pass


def _cancel_handlers(channel: PikaChannel) -> None:
    for task in list(channel.tasks):
        task.cancel()


def _close_reason(channel: PikaChannel | None) -> str:
    """Why the broker closed `channel`, as it said (e.g. PRECONDITION_FAILED - delivery
    acknowledgement timed out), for the log."""
    if channel is None or not channel.is_closed:
        return "no reason given"
    reason = channel.closing.result()
    return f"{type(reason).__name__}: {reason}"
