"""The worker: consume, run in a pool, settle, and only then acknowledge.

Each delivered message is settled exactly one way before it is acknowledged:
run (then ack), park in the broker's delay queues (eta, retry, rate limit),
dead-letter with a reason (undecodable, unknown task, final failure), or
requeue (warm shutdown before it started, a lost child with
reject_on_worker_lost). An ack that cannot be sent because the connection
dropped is left to the broker, which redelivers the message.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from ..amqp.aio import declare_topology
from ..amqp.params import aio_pika_url, ssl_context
from ..errors import DeclareConflict, ProtocolError, SerializationError
from ..protocol import TaskMessage, WireMessage, decode_task, encode_task, new_task_id, utcnow
from ..results import REVOKED, STARTED, result_body
from ..serializers import Codec
from ..settings import TaskOptions
from ..topology.model import Queue, Topology
from . import delays
from .execute import FAILURE, REJECT, RETRY, SUCCESS, Outcome
from .pools import WORKER_LOST, Limits, Pool, make_pool
from .acks import AckBatcher
from .ratelimit import SLOT_HEADER, RateLimiter, parse_rate
from .request import Request

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("amqtask.worker")
REASON_HEADER = "x-amqtask-reason"
CONTROL_EXCHANGE = "amqtask.control"
# Headers RabbitMQ adds on dead-lettering; dropped when we publish a message anew.
_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                  "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason")


@dataclass(frozen=True)
class WorkerConfig:
    queues: tuple[str, ...]
    concurrency: int = 2
    pool: str = "prefork"
    prefetch_multiplier: int = 4
    optimization: str = "fair"
    hostname: str = field(default_factory=lambda: f"amqtask@{socket.gethostname()}")
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    purge: bool = False

    @property
    def prefetch(self) -> int:
        """The window of unacknowledged messages per consumer; 0 means unlimited."""
        return self.concurrency * self.prefetch_multiplier


@dataclass
class Stats:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    parked: int = 0
    dead_lettered: int = 0
    revoked: int = 0
    requeued: int = 0
    acks_lost: int = 0


class Worker:
    def __init__(self, app: "App", config: WorkerConfig) -> None:
        self.app = app
        self.config = config
        self.settings = app.settings
        self.codec = Codec(self.settings.broker.accept_content)
        self.serializer = self.settings.results.serializer
        self.stats = Stats()
        self.pool: Pool = make_pool(config.pool, app, config.concurrency, self.codec, self.serializer,
                                    max_tasks_per_child=config.max_tasks_per_child,
                                    max_memory_per_child=config.max_memory_per_child)
        self.rates = RateLimiter()
        self.consuming = False
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._queues: dict[str, aio_pika.abc.AbstractQueue] = {}
        self._consumer_tags: dict[str, str] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self._inflight: set[asyncio.Task] = set()
        self._waiting: dict[int, AbstractIncomingMessage] = {}
        self._warm = asyncio.Event()
        self._cold = asyncio.Event()
        self._dead_queues: set[str] = set()
        self._control_declared = False
        self._acks: dict[int, AckBatcher] = {}  # per underlying channel (a reconnect brings a new one)
        self._options: dict[str, TaskOptions] = {}

    # -- life cycle ----------------------------------------------------------------
    def request_shutdown(self) -> None:
        """First call: warm shutdown. Second call: cold."""
        if self._warm.is_set():
            log.warning("cold shutdown: stopping now; unacknowledged messages return to their queues")
            self._cold.set()
        else:
            log.info("warm shutdown: finishing running tasks (signal again to stop at once)")
            self._warm.set()

    async def run(self, *, install_signals: bool = True,
                  signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
        """Consume until shut down; returns the exit status (0 warm, 1 cold). Each of
        `signals` asks for a shutdown (first warm, then cold); they are unblocked here,
        once the handler is in place, in case the caller held them back."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in signals:
                loop.add_signal_handler(sig, self.request_shutdown)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signals))
        await self.pool.start()
        try:
            await self._connect()
            await self._declare()
            await self._start_consuming()
        except BaseException:
            await self.pool.stop(cold=True)
            await self._close()
            raise
        watchdog = asyncio.create_task(self._watch_consumers())
        stop = asyncio.create_task(self._warm.wait())
        cold = asyncio.create_task(self._cold.wait())
        await asyncio.wait({stop, cold}, return_when=asyncio.FIRST_COMPLETED)
        watchdog.cancel()
        code = 0
        if self._cold.is_set():
            code = await self._cold_stop()
        else:
            await self._stop_consuming()
            drained = asyncio.create_task(self._drain())
            await asyncio.wait({drained, cold}, return_when=asyncio.FIRST_COMPLETED)
            if self._cold.is_set() and not drained.done():
                drained.cancel()
                code = await self._cold_stop()
            else:
                await self.pool.stop()
                await self._close()
        for task in (stop, cold):
            task.cancel()
        log.info("worker stopped: %s", self.stats)
        return code

    async def _cold_stop(self) -> int:
        await self.pool.stop(cold=True)
        await self._close()
        return 1

    async def _drain(self) -> None:
        for message in list(self._waiting.values()):
            await self._settle_ack(message, requeue=True)
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def _connect(self) -> None:
        broker = self.settings.broker
        errors = []
        for url in broker.urls:
            try:
                self._connection = await asyncio.wait_for(
                    aio_pika.connect_robust(
                        aio_pika_url(url, broker), reconnect_interval=1.0,
                        ssl_context=ssl_context(broker.tls) if url.tls else None,
                        client_properties={"connection_name": f"amqtask worker {self.config.hostname} pid {os.getpid()}"},
                    ),
                    timeout=broker.connect_timeout,
                )
                break
            except (asyncio.TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                errors.append(f"{url.redacted()}: {type(exc).__name__}")
        else:
            from ..errors import BrokerUnavailable

            raise BrokerUnavailable("cannot connect to the broker: " + "; ".join(errors))
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_connection_lost)
        self._channel = await self._connection.channel()
        # Per-consumer QoS (global=False), so quorum queues accept it.
        await self._channel.set_qos(prefetch_count=self.config.prefetch)
        self._publisher = await self._connection.channel(publisher_confirms=True, on_return_raises=True)

    def _on_connection_lost(self, *args: Any) -> None:
        if not self._warm.is_set():
            self.consuming = False
            log.warning("connection to the broker lost; reconnecting")

    def _on_reconnect(self, *args: Any) -> None:
        self.consuming = True
        log.info("reconnected to the broker; consumers restored")

    async def _close(self) -> None:
        self.consuming = False
        for batcher in list(self._acks.values()):  # acks held back for batching go out first
            try:
                await asyncio.wait_for(batcher.drain(), 5)
            except (asyncio.TimeoutError, aiormq.exceptions.AMQPError, RuntimeError, OSError):
                pass  # the channel is gone: the broker redelivers what was not acked
        if self._connection is not None:
            try:
                await asyncio.wait_for(self._connection.close(), 10)
            except (asyncio.TimeoutError, aiormq.exceptions.AMQPError, OSError):
                pass

    def consumed_topology(self) -> Topology:
        """The worker's queues, what they are bound to, their dead-letter queues, the
        delay cascade and the bindings that bring parked messages home."""
        topology = self.settings.topology
        delay = delays.delay_topology()
        queues = dict(delay.queues)
        bindings = list(delay.bindings)
        exchanges = dict(delay.exchanges)
        exchanges.update(topology.exchanges)
        for name in self.config.queues:
            queue = topology.queues.get(name, Queue(name))
            queues[name] = queue
            bindings.extend(topology.bindings_to_queue(name))
            bindings.append(delays.delivery_binding(name))
            if queue.dead_letter_exchange is None:
                queues[f"{name}.dead"] = Queue(f"{name}.dead")
        bindings.extend(b for b in topology.bindings if b.to_exchange)
        return Topology.build(exchanges.values(), queues.values(), bindings)

    async def _declare(self) -> None:
        assert self._channel is not None
        plan = self.consumed_topology()
        declared = await declare_topology(self._channel, plan)
        for name in self.config.queues:
            self._queues[name] = declared[name]
            if self.config.purge:
                purged = await self._queues[name].purge()
                log.info("purged %s messages from %s", purged.message_count, name)
        self._dead_queues = {q for q in plan.queues if q.endswith(".dead")}
        if not self._control_declared:
            await self._declare_control()
            self._control_declared = True

    async def _start_consuming(self) -> None:
        for name, queue in self._queues.items():
            self._consumer_tags[name] = await queue.consume(
                lambda message, q=name: self._on_message(message, q), no_ack=False
            )
        self.consuming = True
        log.info("consuming from %s", ", ".join(self._queues))

    async def _stop_consuming(self) -> None:
        self.consuming = False
        for name, tag in list(self._consumer_tags.items()):
            try:
                await self._queues[name].cancel(tag)
            except (aiormq.exceptions.AMQPError, RuntimeError, OSError):
                pass  # the channel is gone: the broker has stopped delivering anyway
        self._consumer_tags.clear()

    async def _watch_consumers(self) -> None:
        """A consumer the broker cancelled (its queue was deleted) is restored: the
        queue is declared again and consumed again."""
        while True:
            await asyncio.sleep(2.0)
            if self._connection is None or self._connection.is_closed or not self._consumer_tags:
                continue
            try:
                channel = await self._connection.channel()
            except (aiormq.exceptions.AMQPError, OSError, RuntimeError):
                continue  # reconnecting; the robust connection restores consumers itself
            try:
                for name in list(self._queues):
                    if not await self._queue_exists(channel, name):
                        channel = await self._connection.channel()
                        await self._restore_consumer(name)
            except (aiormq.exceptions.AMQPError, OSError, RuntimeError):
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()

    async def _queue_exists(self, channel: aio_pika.abc.AbstractChannel, name: str) -> bool:
        try:
            await channel.declare_queue(name, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False

    async def _restore_consumer(self, name: str) -> None:
        log.error("queue %s disappeared (deleted on the broker); declaring it again", name)
        self.consuming = False
        try:
            await self._declare()
            self._consumer_tags[name] = await self._queues[name].consume(
                lambda message, q=name: self._on_message(message, q), no_ack=False)
            self.consuming = True
        except (aiormq.exceptions.AMQPError, DeclareConflict) as exc:
            log.error("could not restore the consumer of %s: %s", name, exc)

    # -- control -------------------------------------------------------------------
    async def _declare_control(self) -> None:
        assert self._channel is not None
        exchange = await self._channel.declare_exchange(CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT,
                                                        durable=False, auto_delete=False)
        queue = await self._channel.declare_queue(f"amqtask.control.{self.config.hostname}.{uuid.uuid4().hex[:8]}",
                                                  exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_control, no_ack=True)

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        try:
            command = json.loads(message.body)
        except ValueError:
            return
        if not isinstance(command, dict) or command.get("command") != "ping" or not message.reply_to:
            return
        target = command.get("destination")
        if target and self.config.hostname not in target:
            return
        reply = {"hostname": self.config.hostname, "ok": "pong", "consuming": self.consuming,
                 "queues": list(self._queues), "active": len(self._inflight), "pid": os.getpid()}
        await self._publish("", message.reply_to, json.dumps(reply).encode(), mandatory=False,
                            correlation_id=message.correlation_id, content_type="application/json")

    # -- handling a message --------------------------------------------------------
    def _on_message(self, message: AbstractIncomingMessage, queue: str) -> None:
        # Returns nothing for aio-pika to await: a channel that closes cancels what the
        # consumer callback awaits, and a running task must finish whatever happens.
        self._batcher(message).delivered(message.delivery_tag)
        task = asyncio.ensure_future(self._handle(message, queue))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _handle(self, message: AbstractIncomingMessage, queue: str) -> None:
        self.stats.received += 1
        try:
            await self._process(message, queue)
        except Exception:  # a bug here must not kill the worker; the message is redelivered later
            log.exception("internal error while handling a message from %s; it will be redelivered", queue)
            await self._settle_ack(message, requeue=True)

    async def _process(self, message: AbstractIncomingMessage, queue: str) -> None:
        headers = dict(message.headers or {})
        wire = WireMessage(body=message.body, headers=headers, content_type=message.content_type or "",
                           content_encoding=message.content_encoding or "", correlation_id=message.correlation_id,
                           reply_to=message.reply_to, priority=message.priority)
        try:
            task_message = decode_task(wire, self.codec)
        except (ProtocolError, SerializationError) as exc:
            await self._dead_letter(message, queue, f"undecodable: {exc}")
            return
        task = self.app.tasks.get(task_message.task)
        if task is None:
            await self._dead_letter(message, queue, f"unknown task {task_message.task!r}")
            return
        if task_message.embed.get("chord"):
            await self._dead_letter(message, queue, "canvas: chords are not supported (chain and link are)")
            return
        now = utcnow()
        if task_message.expires is not None and task_message.expires <= now:
            await self._revoke(message, task_message, "expired")
            return
        if task_message.eta is not None and task_message.eta > now:
            await self._park(message, queue, (task_message.eta - now).total_seconds())
            return
        options = self._options.get(task.name)
        if options is None:
            options = self._options[task.name] = task.options.merged_over(self.app.router.options_for(task.name))
        if await self._rate_limited(message, queue, task.name, options):
            return
        acks_late = options.acks_late is not False
        if not acks_late and not await self._settle_ack(message):
            return
        if not await self._acquire_slot(message):
            return
        try:
            if task.track_started and message.reply_to and not task_message.ignore_result:
                await self._reply(message.reply_to, task_message.id, STARTED)
            outcome = await self.pool.run(task, self._request(message, queue, task_message), self._limits(
                task_message, options))
        finally:
            self._slots.release()
        await self._settle(message, queue, task_message, options, outcome, acks_late)

    async def _acquire_slot(self, message: AbstractIncomingMessage) -> bool:
        """Wait for an idle pool slot (fair dispatch). False if a warm shutdown began
        meanwhile: the message went back to its queue unstarted."""
        key = id(message)
        self._waiting[key] = message
        try:
            await self._slots.acquire()
        finally:
            self._waiting.pop(key, None)
        if self._warm.is_set():
            self._slots.release()
            await self._settle_ack(message, requeue=True)
            return False
        return True

    def _request(self, message: AbstractIncomingMessage, queue: str, tm: TaskMessage) -> Request:
        return Request(
            id=tm.id, task=tm.task, args=tm.args, kwargs=dict(tm.kwargs), retries=tm.retries,
            redelivered=bool(message.redelivered), eta=tm.eta, expires=tm.expires, reply_to=tm.reply_to,
            root_id=tm.root_id, parent_id=tm.parent_id, queue=queue, exchange=message.exchange or "",
            routing_key=message.routing_key or "", hostname=self.config.hostname,
            headers={"ignore_result": tm.ignore_result,
                     "canvas": bool(tm.embed.get("chain") or tm.embed.get("callbacks"))},
        )

    def _limits(self, tm: TaskMessage, options: TaskOptions) -> Limits:
        def first(*values: float | None) -> float | None:
            return next((v for v in values if v), None)

        return Limits(soft=first(tm.soft_time_limit, options.soft_time_limit, self.config.soft_time_limit),
                      hard=first(tm.time_limit, options.time_limit, self.config.time_limit))

    async def _rate_limited(self, message: AbstractIncomingMessage, queue: str, name: str,
                            options: TaskOptions) -> bool:
        try:
            rate = parse_rate(options.rate_limit)
        except ValueError:
            rate = None
        if rate is None:
            return False
        now = time.time()
        slot_ms = (message.headers or {}).get(SLOT_HEADER)
        if isinstance(slot_ms, int) and slot_ms <= now * 1000 + 1:
            return False  # this message already holds a reserved slot
        start = self.rates.reserve(name, rate, now)
        if start <= now:
            return False
        # An integer: AMQP clients encode floats in headers with differing precision.
        await self._park(message, queue, start - now, extra_headers={SLOT_HEADER: math.ceil(start * 1000)})
        return True

    async def _settle(self, message: AbstractIncomingMessage, queue: str, tm: TaskMessage, options: TaskOptions,
                      outcome: Outcome, acks_late: bool) -> None:
        if outcome.reply and tm.reply_to:
            await self._publish_reply(tm.reply_to, tm.id, outcome.reply, outcome.reply_content_type)
        if outcome.state == SUCCESS:
            self.stats.succeeded += 1
            log.debug("task %s[%s] succeeded in %.3fs", tm.task, tm.id, outcome.runtime)
            await self._continue_canvas(tm, outcome.value)
        elif outcome.state == RETRY:
            self.stats.retried += 1
            await self._republish_retry(tm, queue, outcome.countdown or 0.0)
            log.info("task %s[%s] retry %d in %.1fs", tm.task, tm.id, tm.retries + 1, outcome.countdown or 0)
        elif outcome.state == REJECT and outcome.requeue:
            await self._settle_ack(message, requeue=True)
            return
        elif outcome.state == WORKER_LOST and options.reject_on_worker_lost:
            log.error("task %s[%s] lost its worker (%s); returning it to the queue", tm.task, tm.id, outcome.reason)
            await self._settle_ack(message, requeue=True)
            return
        else:  # FAILURE, REJECT, WORKER_LOST: the message is kept, with the reason, in the dead letters
            self.stats.failed += 1
            log.error("task %s[%s] failed: %s", tm.task, tm.id, outcome.reason)
            if outcome.state == WORKER_LOST and tm.reply_to:
                from ..results import exception_payload
                from .request import WorkerLostError

                payload = exception_payload(WorkerLostError(outcome.reason))
                await self._reply(tm.reply_to, tm.id, FAILURE, payload)
            await self._dead_letter(message, queue, outcome.reason or outcome.state, acked=not acks_late)
            return
        if acks_late:
            await self._settle_ack(message)

    # -- broker operations ---------------------------------------------------------
    async def _settle_ack(self, message: AbstractIncomingMessage, *, requeue: bool | None = None) -> bool:
        """Ack (or with requeue=True/False, nack). False when the channel the message
        came on is gone: the broker will redeliver it."""
        try:
            batcher = self._batcher(message)
        except aio_pika.exceptions.ChannelInvalidStateError:
            self.stats.acks_lost += 1
            log.warning("could not settle message %s: its channel is gone; the broker will redeliver it",
                        message.correlation_id)
            return False
        if requeue is None:
            batcher.ack(message.delivery_tag)
            return True
        try:
            await message.nack(requeue=requeue)
            batcher.settled_elsewhere(message.delivery_tag)
            if requeue:
                self.stats.requeued += 1
            return True
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.MessageProcessError, RuntimeError, OSError) as exc:
            self.stats.acks_lost += 1
            log.warning("could not %s message %s (%s); the broker will redeliver it",
                        "nack", message.correlation_id, type(exc).__name__)
            return False

    def _batcher(self, message: AbstractIncomingMessage) -> AckBatcher:
        channel = message.channel
        batcher = self._acks.get(id(channel))
        if batcher is None or batcher.channel is not channel:
            batcher = self._acks[id(channel)] = AckBatcher(
                channel, self._ack_lost, window=self.config.prefetch, slots=self.config.concurrency)
            # drop batchers of channels that are gone (after a reconnect)
            for key in [k for k, b in self._acks.items() if b.channel.is_closed and k != id(channel)]:
                del self._acks[key]
        return batcher

    def _ack_lost(self, tag: int) -> None:
        self.stats.acks_lost += 1

    async def _publish(self, exchange: str, routing_key: str, body: bytes, *, mandatory: bool = True,
                       headers: dict | None = None, **properties: Any) -> None:
        assert self._publisher is not None
        target = self._publisher.default_exchange if not exchange else await self._publisher.get_exchange(
            exchange, ensure=False)
        await target.publish(aio_pika.Message(body, headers=headers, **properties), routing_key, mandatory=mandatory)

    def _copy_properties(self, message: AbstractIncomingMessage) -> dict[str, Any]:
        return {
            "content_type": message.content_type, "content_encoding": message.content_encoding,
            "correlation_id": message.correlation_id, "reply_to": message.reply_to, "priority": message.priority,
            "delivery_mode": aio_pika.DeliveryMode.PERSISTENT, "message_id": message.message_id,
        }

    async def _park(self, message: AbstractIncomingMessage, queue: str, delay_seconds: float,
                    extra_headers: dict | None = None) -> None:
        """Hand a message that must wait to the broker's delay queues, then ack it."""
        exchange, key = delays.park_route(delay_seconds, queue)
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _DEATH_HEADERS}
        headers.update(extra_headers or {})
        try:
            await self._publish(exchange, key, message.body, headers=headers, **self._copy_properties(message))
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.DeliveryError, RuntimeError, OSError) as exc:
            log.warning("could not park message %s (%s); leaving it to be redelivered", message.correlation_id, exc)
            await self._settle_ack(message, requeue=True)
            return
        self.stats.parked += 1
        await self._settle_ack(message)

    async def _republish_retry(self, tm: TaskMessage, queue: str, countdown: float) -> None:
        eta = utcnow() + dt.timedelta(seconds=countdown)
        # RabbitMQ drops a message that dead-letters through a queue its x-death
        # already names (cycle detection), so the cascade's traces must not travel on.
        extra = {k: v for k, v in tm.extra_headers.items() if k not in _DEATH_HEADERS and k != SLOT_HEADER}
        retry = TaskMessage(**{**tm.__dict__, "retries": tm.retries + 1, "eta": eta, "extra_headers": extra})
        wire = encode_task(retry, self.codec, serializer="json")
        exchange, key = delays.park_route(countdown, queue)
        await self._publish(exchange, key, wire.body, headers=dict(wire.headers), content_type=wire.content_type,
                            content_encoding=wire.content_encoding, correlation_id=wire.correlation_id,
                            reply_to=wire.reply_to, priority=wire.priority,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def _continue_canvas(self, tm: TaskMessage, value: Any) -> None:
        """Celery's chain and link: the next signature (the chain's last entry, as
        Celery stores it reversed) and each callback get the result prepended to their
        args, unless immutable. Published before the ack, so a crash repeats, not loses."""
        chain = list(tm.embed.get("chain") or [])
        followers = [(chain.pop(), chain)] if chain else []
        followers += [(sig, None) for sig in tm.embed.get("callbacks") or []]
        for signature, rest in followers:
            try:
                await self._apply_signature(signature, value, tm, rest)
            except Exception as exc:  # a malformed signature must not undo the finished task
                log.error("task %s[%s]: could not send the next task of its chain/link: %s", tm.task, tm.id, exc)

    async def _apply_signature(self, sig: Any, value: Any, parent: TaskMessage, chain: list | None) -> None:
        if not isinstance(sig, dict) or not isinstance(sig.get("task"), str):
            raise ValueError(f"not a task signature: {str(sig)[:200]}")
        options = sig.get("options") or {}
        args = tuple(sig.get("args") or ())
        if not sig.get("immutable"):
            args = (value, *args)
        embed = {"callbacks": None, "errbacks": None, "chain": chain or None, "chord": None}
        follower = TaskMessage(
            task=sig["task"], id=options.get("task_id") or new_task_id(), args=args,
            kwargs=dict(sig.get("kwargs") or {}), embed=embed, root_id=parent.root_id or parent.id,
            parent_id=parent.id, reply_to=options.get("reply_to"), priority=options.get("priority"),
        )
        if options.get("queue") and not options.get("exchange"):
            exchange, key = "", str(options["queue"])
        elif options.get("exchange") is not None or options.get("routing_key") is not None:
            exchange, key = str(options.get("exchange") or ""), str(options.get("routing_key") or "")
        else:
            dest = self.app.router.route(follower.task)
            exchange, key = dest.exchange, dest.routing_key
        wire = encode_task(follower, self.codec)
        await self._publish(exchange, key, wire.body, headers=dict(wire.headers), content_type=wire.content_type,
                            content_encoding=wire.content_encoding, correlation_id=wire.correlation_id,
                            reply_to=wire.reply_to, priority=wire.priority,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def _dead_letter(self, message: AbstractIncomingMessage, queue: str, reason: str, *,
                           acked: bool = False) -> None:
        """Keep the message, with why, where an operator can find it: the queue's
        dead-letter exchange if it has one, else `<queue>.dead`. Then ack."""
        log.error("dead-lettering message %s from %s: %s", message.correlation_id, queue, reason)
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _DEATH_HEADERS}
        headers.update({REASON_HEADER: reason[:1000], "x-amqtask-queue": queue,
                        "x-amqtask-failed-at": utcnow().isoformat(), "x-amqtask-worker": self.config.hostname})
        spec = self.settings.topology.queues.get(queue)
        exchange, key = "", f"{queue}.dead"
        if spec is not None and spec.dead_letter_exchange is not None:
            exchange = spec.dead_letter_exchange
            key = str(spec.arguments.get("x-dead-letter-routing-key", message.routing_key or ""))
        try:
            try:
                await self._publish(exchange, key, message.body, headers=headers, **self._copy_properties(message))
            except aio_pika.exceptions.DeliveryError:
                log.error("dead-letter exchange %r routes %r nowhere; using %s.dead", exchange, key, queue)
                await self._ensure_dead_queue(queue)
                await self._publish("", f"{queue}.dead", message.body, headers=headers,
                                    **self._copy_properties(message))
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.DeliveryError, RuntimeError, OSError) as exc:
            log.warning("could not dead-letter message %s (%s); it will be redelivered", message.correlation_id, exc)
            if not acked:
                await self._settle_ack(message, requeue=True)
            return
        self.stats.dead_lettered += 1
        if not acked:
            await self._settle_ack(message)

    async def _ensure_dead_queue(self, queue: str) -> None:
        if f"{queue}.dead" not in self._dead_queues:
            assert self._channel is not None
            await self._channel.declare_queue(f"{queue}.dead", durable=True)
            self._dead_queues.add(f"{queue}.dead")

    async def _revoke(self, message: AbstractIncomingMessage, tm: TaskMessage, why: str) -> None:
        self.stats.revoked += 1
        log.info("task %s[%s] %s; not run (REVOKED)", tm.task, tm.id, why)
        if tm.reply_to and not tm.ignore_result:
            payload = {"exc_type": "TaskRevokedError", "exc_message": [why], "exc_module": "celery.exceptions"}
            await self._reply(tm.reply_to, tm.id, REVOKED, payload)
        await self._settle_ack(message)

    async def _reply(self, reply_to: str, task_id: str, state: str, result: Any = None) -> None:
        body, ctype, _, _ = self.codec.encode(result_body(task_id, state, result), self.serializer)
        await self._publish_reply(reply_to, task_id, body, ctype)

    async def _publish_reply(self, reply_to: str, task_id: str, body: bytes, content_type: str) -> None:
        """Results go to the client's reply queue; a client that went away is not an
        error (the result has nowhere to go), so no mandatory flag."""
        try:
            await self._publish("", reply_to, body, mandatory=False, correlation_id=task_id,
                                content_type=content_type, content_encoding="utf-8",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        except (aiormq.exceptions.AMQPError, RuntimeError, OSError) as exc:
            log.warning("could not publish the result of %s (%s)", task_id, type(exc).__name__)


def default_hostname(name: str | None) -> str:
    if not name:
        return f"amqtask@{socket.gethostname()}"
    return name.replace("%h", socket.gethostname()).replace("%p", str(os.getpid()))


