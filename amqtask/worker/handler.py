"""The handler: what becomes of one delivered message. No wire in sight.

An adapter hands it `Delivery` objects and a `PublishPort`; the handler decodes,
decides, runs the task in the pool and settles the delivery exactly once:

- undecodable, unknown task, a chord without a result backend that can count:
  dead-lettered with the reason (and a FAILURE result, so nobody waits forever for
  it), then acked;
- expired or revoked: REVOKED result (a chord header part counted as failed),
  acked, not run;
- eta in the future or over its rate limit: parked in the broker, acked (refused
  as above when its queue's name is too long for the delay routing key);
- run: the result is stored (result backend or the client's reply queue), the
  chord counted, then the retry is published, the chain continued or the failure
  dead-lettered (errbacks sent), and only then is the message acked (late acks);
  `acks_late: false` acks just before the task starts;
- not run because the worker is stopping, or its run was cut short by a cold
  shutdown or (with `reject_on_worker_lost`) a dead child: requeued.

Whatever goes wrong after a task has run, the message is never requeued: it is
dead-lettered with the reason and acked (if the broker refuses even the dead
letter, it is acked and logged as dropped), so a task cannot run in a loop. A bug
in the handler stores FAILURE with the reason for whoever waits, then dead-letters.
Every publish is confirmed and every result stored; one that fails for lack of a
broker or backend is retried with backoff while the delivery can still be settled
(it stays unacked meanwhile), and if its channel is gone the broker redelivers the
message (at least once). For a message acked before its task ran nothing will
redeliver it: what the run produced is retried for longer, then logged as lost.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Container, Mapping

from ..beat.dedupe import SCHEDULE_HEADER, SCHEDULED_FOR_HEADER, ScheduledRunFilter
from ..canvas import Signature, prepare_signature
from ..delivery import Delivery, PublishPort, Settle
from ..errors import (AmqtaskError, NackError, ProtocolError, PublishError, RoutingError, SerializationError,
                      UnroutableError)
from ..protocol import TaskMessage, WireMessage, decode_task, encode_task, utcnow
from ..publisher import Publisher
from ..results import FAILURE, RETRY, REVOKED, STARTED, SUCCESS, exception_payload
from ..results.base import ResultStore
from ..results.meta import BackendUnavailable, ResultMeta
from ..results.rpc import RpcStore
from ..serializers import BY_CONTENT_TYPE, Codec
from ..settings import TaskOptions
from . import delays
from .execute import CANCELLED, IGNORED, NOT_STARTED, REJECT, WORKER_LOST, Outcome, stopped_from_outside
from .observe import Observer
from .pools import NEEDS_LOOP, REVOKED_WAITING, STOPPING, WITHDRAWN, Limits, Pool
from .ratelimit import SLOT_HEADER, RateLimiter, parse_rate
from .registry import RunningRegistry
from .request import Request, WorkerLostError

if TYPE_CHECKING:
    from ..app import App
    from ..task import Task

log = logging.getLogger("amqtask.worker")
REASON_HEADER = "x-amqtask-reason"
# Headers RabbitMQ adds when it dead-letters; a message published anew must not carry
# them, or RabbitMQ's cycle detection silently drops it on its next dead-lettering.
# A quorum queue's delivery count belongs to the delivery, not to a copy published anew.
DEATH_HEADERS = frozenset({"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                           "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
                           delays.DELIVERY_COUNT})
# Bodies at least this large, every compressed body (a few hundred bytes of bzip2 can
# take seconds to expand, up to max_message_bytes) and every YAML body are decoded in
# a thread, so the event loop keeps answering heartbeats and acking while they parse.
DECODE_IN_THREAD_BYTES = 256 * 1024
# How long to wait between attempts to publish what must not be lost (a result, a
# retry, a dead letter) while the broker refuses; the delivery stays unacked meanwhile.
REPUBLISH_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
# A message acked before its task ran (acks_late off) has nothing that would bring back
# what the run produced, so that is tried for longer (about two minutes at the same
# backoff) before it is given up as lost.
ACKED_EARLY_ATTEMPTS = 30


@dataclass(frozen=True)
class HandlerConfig:
    """What the handler needs to know of the worker it serves."""

    hostname: str
    time_limit: float | None = None
    soft_time_limit: float | None = None


@dataclass
class Stats:
    received: int = 0
    ran: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    parked: int = 0
    dead_lettered: int = 0
    revoked: int = 0
    requeued: int = 0
    duplicates: int = 0
    internal_errors: int = 0
    dropped: int = 0  # ran, but no dead letter could be kept: acked, so as not to run again
    results_lost: int = 0  # a result, retry or follow-up of a task acked before it ran, given up on


@dataclass(eq=False)
class Job:
    """A decoded task message on its way through the handler."""

    delivery: Delivery
    message: TaskMessage
    task: "Task"
    options: TaskOptions
    acked_early: bool = field(default=False)
    started: float | None = None  # epoch seconds, once it runs
    reported: bool = False  # its final state is stored: an error after that must not replace it
    slot: int | None = None  # where the registry of running tasks holds it


class Handler:
    def __init__(self, app: "App", config: HandlerConfig, pool: Pool, port: PublishPort, *,
                 store: ResultStore | None = None, codec: Codec | None = None, observe: Observer | None = None,
                 now: Callable[[], dt.datetime] = utcnow, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.config = config
        self.pool = pool
        self.port = port
        settings = app.settings
        self.codec = codec or Codec(settings.broker.accept_content, max_bytes=settings.broker.max_message_bytes)
        self.serializer = settings.results.serializer
        # Without a result backend, results still go to a client's reply_to (rpc://), as
        # Celery clients using rpc:// expect of any worker.
        self.store = store or RpcStore(port.publish, serializer=self.serializer, accept=settings.broker.accept_content)
        self._stores_every_result = not isinstance(self.store, RpcStore)
        # Builds chain steps, callbacks and chord bodies; never asks for results itself.
        self.follow = Publisher(settings, app.router, results=None)
        self.now = now
        self.clock = clock
        self.stats = Stats()
        self.rates = RateLimiter()
        self.scheduled = ScheduledRunFilter()  # drops a second copy of a periodic task's run
        self.observe = observe or Observer()
        self.revoked: Container[str] = frozenset()  # task ids not to run (remote control's revoke)
        self.terminated: set[str] = set()  # running task ids stopped by revoke(terminate=True)
        self.totals: Counter[str] = Counter()  # tasks accepted, per name
        self.rate_limits: dict[str, str | None] = {}  # set at run time (rate_limit command)
        self.time_limits: dict[str, Limits] = {}  # set at run time (time_limit command)
        self.stopping = False
        self.waiting: dict[Delivery, Job] = {}  # accepted, waiting for an idle slot
        self.active: dict[str, Job] = {}  # task id -> running job
        # The tasks each process of a supervised worker runs (None: a single process).
        self.registry: RunningRegistry | None = None
        # How many more tasks this process may start (--max-tasks-per-child for a
        # process that runs tasks itself); None: no limit. Taken under a lock: pool
        # threads start tasks without the event loop.
        self.starts_left: int | None = None
        self._starts_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------
    def stop_taking(self) -> None:
        """Warm shutdown: run nothing new; messages waiting for a slot go back to their queue."""
        self.stopping = True
        for delivery in list(self.waiting):
            # A pool thread starting this job pops it too (_JobStart.now): whoever pops it decides.
            job = self.waiting.pop(delivery, None)
            if job is not None and self._requeue(delivery):
                self.observe.rejected(job.message, requeue=True)
        self.pool.withdraw()

    # -- one message ---------------------------------------------------------------
    async def handle(self, delivery: Delivery) -> None:
        """Settle `delivery` exactly once. Never raises."""
        self.stats.received += 1
        job: Job | None = None
        ran = False
        try:
            job = await self._admit(delivery)
            if job is None:
                return
            outcome = self._lost_before(job) or await self._run(job)
            if outcome is None:
                return
            ran = True
            self.stats.ran += 1
            await self._finish(job, outcome)
        except asyncio.CancelledError as exc:
            if stopped_from_outside(exc):
                raise  # a cold shutdown or a lost channel: the broker has the message again
            await self._internal_error(delivery, exc, job, ran)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # neither kill the worker nor loop the message
            await self._internal_error(delivery, exc, job, ran)

    async def _admit(self, delivery: Delivery) -> Job | None:
        """Decode and check a message; None when it was settled here (not to be run)."""
        try:
            message = await self._decode(delivery.message)
        except (ProtocolError, SerializationError) as exc:
            await self._refuse(delivery, f"undecodable: {exc}", exception_payload(exc))
            return None
        limit = delays.delivery_limit_reason(delivery.queue, delivery.message.headers, self.app.settings.topology)
        if limit is not None:  # its next return would make the broker drop it, without a reason
            await self._refuse(delivery, limit, exception_payload(WorkerLostError(limit)), message=message)
            return None
        task = self.app.tasks.get(message.task)
        if task is None:
            # Celery's own name for it, so Celery clients recognise the failure too.
            error = {"exc_type": "NotRegistered", "exc_message": [message.task], "exc_module": "celery.exceptions"}
            await self._refuse(delivery, f"unknown task {message.task!r}", error, message=message)
            return None
        if message.embed.get("chord") and not self.store.supports_chords:
            error = {"exc_type": "ChordError", "exc_message": ["chords need a result backend"],
                     "exc_module": "celery.exceptions"}
            await self._refuse(delivery, "canvas: chords need a result backend (redis:// or db+postgresql://), "
                                         "not rpc://", error, message=message)
            return None
        job = Job(delivery, message, task, self.app.router.effective_options(task.name, task.options))
        if message.id in self.revoked:
            await self._revoke(job, "revoked")
            return None
        now = self.now()
        if message.expires is not None and message.expires <= now:
            await self._revoke(job, "expired")
            return None
        if message.eta is not None and message.eta > now:
            await self._park(delivery, message, (message.eta - now).total_seconds())
            return None
        if log.isEnabledFor(logging.INFO):
            log.info("Task %s[%s] received", message.task, message.id)
        if await self._rate_limited(job):
            return None
        # A retry reuses its id and a redelivery is the broker's own second try: neither is a copy.
        headers = delivery.message.headers
        if message.retries == 0 and not delivery.redelivered and not self.scheduled.admit(message.id, headers):
            self.stats.duplicates += 1
            log.warning("task %s[%s]: a second copy of scheduled run %s (%s); not run", message.task, message.id,
                        headers.get(SCHEDULE_HEADER), headers.get(SCHEDULED_FOR_HEADER))
            self._ack(delivery)
            return None
        self.totals[task.name] += 1
        self.observe.received(message, delivery.message.headers)
        return job

    async def _decode(self, wire: WireMessage) -> TaskMessage:
        if (len(wire.body) >= DECODE_IN_THREAD_BYTES or wire.headers.get("compression")
                or "yaml" in (wire.content_type or "")):
            return await asyncio.get_running_loop().run_in_executor(None, decode_task, wire, self.codec)
        return decode_task(wire, self.codec)

    async def _rate_limited(self, job: Job) -> bool:
        """Park a task over its rate until its reserved slot; True when parked."""
        name = job.task.name
        try:
            rate = parse_rate(self.rate_limits[name] if name in self.rate_limits else job.options.rate_limit)
        except ValueError:
            rate = None
        if rate is None:
            return False
        now = self.clock()
        slot_ms = job.delivery.message.headers.get(SLOT_HEADER)
        if isinstance(slot_ms, int) and slot_ms <= now * 1000 + 1:
            return False  # this message already holds a reserved slot
        start = self.rates.reserve(job.task.name, rate, now)
        if start <= now:
            return False
        # An integer: AMQP clients encode floats in headers with differing precision.
        await self._park(job.delivery, job.message, start - now, {SLOT_HEADER: math.ceil(start * 1000)})
        return True

    async def _run(self, job: Job) -> Outcome | None:
        """Hand the task to the pool, which starts it when a slot is free; None when it
        was not run (returned to its queue, revoked meanwhile, or its channel gone)."""
        delivery, message = job.delivery, job.message
        self.waiting[delivery] = job
        try:
            outcome = await self.pool.run(job.task, self._request(job), self._limits(job), _JobStart(self, job))
        finally:
            self.waiting.pop(delivery, None)
            self.active.pop(message.id, None)
            if self.registry is not None:
                self.registry.finished(job.slot)
        if outcome.state != NOT_STARTED:
            return outcome
        if outcome.reason == REVOKED_WAITING:
            await self._revoke(job, "revoked")
        elif outcome.reason == STOPPING and self._requeue(delivery):
            self.observe.rejected(message, requeue=True)
        return None  # WITHDRAWN: the warm shutdown returned it to its queue already

    def _starts_on_the_loop(self, job: Job) -> bool:
        """Whether starting the job needs the event loop: an early ack settles the
        delivery, and a STARTED result is stored, before the task runs."""
        return job.options.acks_late is False or (job.task.track_started and self._wants_result(job.message))

    def _may_start_one(self) -> bool:
        if self.starts_left is None:
            return True
        with self._starts_lock:
            if self.starts_left <= 0:
                return False
            self.starts_left -= 1
            return True

    def _mark_started(self, job: Job) -> None:
        """The job runs from now (any thread may call this)."""
        self.active[job.message.id] = job
        job.started = self.clock()
        if self.registry is not None:
            job.slot = self.registry.started(job.message.id)
        self.observe.started(job.message)

    def _lost_before(self, job: Job) -> Outcome | None:
        """A redelivered task that was running in a worker process that died (see
        worker/registry.py) runs once more, as any redelivered task: the process may
        have been killed for reasons of its own. One that was running when two
        processes died is a poison task: failed with WorkerLostError, not run again."""
        if self.registry is None or not job.delivery.redelivered:
            return None
        lost = self.registry.lost(job.message.id)
        if lost is None:
            return None
        count, reason = lost
        if count < 2:
            log.warning("task %s[%s] was running when %s; running it once more", job.message.task, job.message.id,
                        reason)
            return None
        log.error("task %s[%s] was running when %s, and when another process died before; not run again",
                  job.message.task, job.message.id, reason)
        why = f"{reason} (the second worker process it was running in to die)"
        return Outcome(WORKER_LOST, reason=f"WorkerLostError: {why}", exc_payload=exception_payload(WorkerLostError(why)))

    def _request(self, job: Job) -> Request:
        message, delivery = job.message, job.delivery
        return Request(
            id=message.id, task=message.task, args=message.args, kwargs=dict(message.kwargs),
            retries=message.retries, redelivered=delivery.redelivered, eta=message.eta, expires=message.expires,
            reply_to=message.reply_to, root_id=message.root_id, parent_id=message.parent_id, queue=delivery.queue,
            exchange=delivery.exchange, routing_key=delivery.routing_key, hostname=self.config.hostname,
            headers={"ignore_result": message.ignore_result,
                     "result": self._wants_result(message) or self.observe.wants_values,
                     "canvas": bool(message.embed.get("chain") or message.embed.get("callbacks")
                                    or message.embed.get("chord"))},
        )

    def _limits(self, job: Job) -> Limits:
        """The message's own limits, else the task's options, else the worker's."""
        def first(*values: float | None) -> float | None:
            return next((v for v in values if v), None)

        message, options = job.message, job.options
        changed = self.time_limits.get(job.task.name) or Limits()
        return Limits(soft=first(message.soft_time_limit, changed.soft, options.soft_time_limit,
                                 self.config.soft_time_limit),
                      hard=first(message.time_limit, changed.hard, options.time_limit, self.config.time_limit))

    async def _finish(self, job: Job, outcome: Outcome) -> None:
        """Report, follow up and settle a task that ran."""
        delivery, message = job.delivery, job.message
        state = outcome.state
        if state == CANCELLED or (state == REJECT and outcome.requeue):
            if self._requeue(delivery):  # a no-op when it was acked early
                self.observe.rejected(message, requeue=True)
            return
        if state == IGNORED:  # the task said so: acknowledged, nothing recorded
            self._ack(delivery)
            return
        if message.id in self.terminated:  # revoke(terminate=True) stopped it: revoked, not failed
            self.terminated.discard(message.id)
            await self._revoke(job, "terminated", announce=False)
            return
        if state == WORKER_LOST and job.options.reject_on_worker_lost:
            if not delivery.redelivered:
                log.error("task %s[%s] lost its worker (%s); returning it to the queue",
                          message.task, message.id, outcome.reason)
                if self._requeue(delivery):
                    self.observe.rejected(message, requeue=True)
                return
            # Its second lost worker: a poison task that kills whoever runs it.
            outcome = replace(outcome, reason=f"{outcome.reason} (twice: not requeued again)")
        stored, result = _stored_state(outcome)
        if self._wants_result(message) and not await self._store(job, stored, result, outcome.traceback):
            return  # the delivery's channel went away: the broker redelivers it
        job.reported = stored != RETRY  # a retry's result is still to come
        if message.embed.get("chord") and stored in (SUCCESS, FAILURE) and not await self._chord_part(job, stored,
                                                                                                         result):
            return
        if state == SUCCESS:
            self.stats.succeeded += 1
            self.observe.succeeded(message, outcome)
            if log.isEnabledFor(logging.INFO):  # Celery's line, as its -l info users grep for it
                log.info("Task %s[%s] succeeded in %.6fs: %r", message.task, message.id, outcome.runtime,
                         outcome.value)
            await self._continue_canvas(job, outcome.value)
        elif state == RETRY:
            self.observe.retried(message, outcome)
            if not await self._retry(job, outcome.countdown or 0.0):
                return
        else:  # FAILURE, REJECT, WORKER_LOST: kept, with the reason, in the dead letters
            self.stats.failed += 1
            if state == REJECT:
                self.observe.rejected(message, requeue=False)
            else:
                self.observe.failed(message, outcome)
            log.error("Task %s[%s] raised unexpected: %s", message.task, message.id, outcome.reason)
            await self._on_failure_canvas(job, result, outcome.traceback)
            await self._dead_letter(delivery, outcome.reason or state, ran=True)
            return
        self._ack(delivery)

    # -- what a message becomes ------------------------------------------------------
    async def _retry(self, job: Job, countdown: float) -> bool:
        """Publish the next attempt (parked for `countdown`); False when it could not
        be built, in which case the message was dead-lettered instead."""
        message = job.message
        extra = {k: v for k, v in message.extra_headers.items() if k not in DEATH_HEADERS and k != SLOT_HEADER}
        retry = replace(message, retries=message.retries + 1, eta=self.now() + dt.timedelta(seconds=countdown),
                        extra_headers=extra)
        refusal = delays.unparkable_reason(job.delivery.queue)
        if refusal is not None:
            await self._retry_impossible(job, refusal, RoutingError(refusal))
            return False
        wire = job.delivery.message
        serializer = BY_CONTENT_TYPE.get((wire.content_type or "").split(";")[0].strip().lower())
        try:
            encoded = encode_task(retry, self.codec, serializer=serializer.name if serializer else "json",
                                  compression=_compression_name(wire.headers.get("compression")))
        except (AmqtaskError, ValueError, TypeError) as exc:
            await self._retry_impossible(job, f"retry could not be encoded: {type(exc).__name__}: {exc}", exc)
            return False
        if not await self._reliably(job.delivery, "retry",
                                            lambda: self.port.park(job.delivery.queue, encoded, countdown)):
            return False
        self.stats.retried += 1
        log.info("Task %s[%s] retry: attempt %d in %.1fs", message.task, message.id, retry.retries, countdown)
        return True

    async def _retry_impossible(self, job: Job, reason: str, error: BaseException) -> None:
        """The retry cannot be sent: the task has failed (FAILURE replaces the RETRY
        stored for whoever waits) and its message is kept in the dead letters."""
        self.stats.failed += 1
        if self._wants_result(job.message) and not await self._store(job, FAILURE, _error_payload(error, reason)):
            return
        job.reported = True
        await self._dead_letter(job.delivery, reason, ran=True)

    async def _park(self, delivery: Delivery, message: TaskMessage, delay: float,
                    extra_headers: dict[str, Any] | None = None) -> None:
        """Hand a message that must wait to the broker's delay queues, then ack it;
        one whose queue cannot have delays is refused (FAILURE, dead letter)."""
        refusal = delays.unparkable_reason(delivery.queue)
        if refusal is not None:
            await self._refuse(delivery, refusal, _error_payload(RoutingError(refusal), refusal), message=message)
            return
        headers = {k: v for k, v in delivery.message.headers.items() if k not in DEATH_HEADERS}
        headers.update(extra_headers or {})
        parked = replace(delivery.message, headers=headers, delivery_mode=2)
        if await self._reliably(delivery, "park",
                                        lambda: self.port.park(delivery.queue, parked, delay)):
            self.stats.parked += 1
            self._ack(delivery)

    async def _refuse(self, delivery: Delivery, reason: str, error: dict[str, Any], *,
                      message: TaskMessage | None = None) -> None:
        """A message that cannot be run: a FAILURE result (`error` in Celery's
        exception form) for whoever waits on it, then the dead letters."""
        if await self._fail_for_waiters(delivery, error, message):
            await self._dead_letter(delivery, reason, ran=False)

    async def _fail_for_waiters(self, delivery: Delivery, error: dict[str, Any], message: TaskMessage | None) -> bool:
        """Store FAILURE (`error` in Celery's exception form) for whoever waits on the
        message, read as far as it can be, so a get() without a timeout returns;
        False when its channel went away first."""
        task_id, reply_to = _reply_address(delivery.message, message)
        wanted = (reply_to or self._stores_every_result) and not (message and message.ignore_result)
        if not (task_id and wanted):
            return True
        meta = ResultMeta(task_id, FAILURE, error, name=message.task if message else None,
                          worker=self.config.hostname, queue=delivery.routing_key, reply_to=reply_to)
        return await self._reliably(delivery, "result", lambda: self.store.store(meta))

    async def _revoke(self, job: Job, why: str, *, announce: bool = True) -> None:
        """Not run (or stopped): REVOKED for whoever waits, a chord header part counted
        as failed (so the chord's body fails with a ChordError, as in Celery, instead
        of waiting forever), acked. `announce`: send the task-revoked event (the
        control node already did for a terminated task)."""
        delivery, message = job.delivery, job.message
        self.stats.revoked += 1
        log.info("task %s[%s] %s; not run (REVOKED)", message.task, message.id, why)
        if announce:
            self.observe.revoked(message, expired=why == "expired")
        payload = {"exc_type": "TaskRevokedError", "exc_message": [why], "exc_module": "celery.exceptions"}
        if self._wants_result(message) and not await self._store(job, REVOKED, payload):
            return
        job.reported = True
        if message.embed.get("chord") and not await self._chord_part(job, REVOKED, payload):
            return
        self._ack(delivery)

    async def _dead_letter(self, delivery: Delivery, reason: str, *, ran: bool) -> None:
        """Keep the message, with why, where an operator finds it; then ack (a no-op
        when it was acked early). `ran`: its task ran, so it must never go back to
        its queue; if no dead letter can be kept, see `_not_kept`."""
        log.error("dead-lettering message %s from %s: %s", delivery.message.correlation_id, delivery.queue, reason)
        self.observe.dead_lettered(reason)
        dead = self._dead_copy(delivery, reason)
        try:
            done = await self._reliably(delivery, "dead letter", lambda: self.port.dead_letter(
                delivery.queue, dead, routing_key=delivery.routing_key))
        except (UnroutableError, NackError) as exc:
            self._not_kept(delivery, exc, ran=ran)
            return
        if done:
            self.stats.dead_lettered += 1
            self._ack(delivery)

    def _not_kept(self, delivery: Delivery, exc: Exception, *, ran: bool) -> None:
        """No dead letter could be kept (the broker refused it). A message whose task
        ran is dropped (acked): returned to its queue it would run again, in a loop.
        One not run yet goes back once (a first delivery), then is refused (the broker
        dead-letters it if the queue has a dead-letter exchange, else drops it)."""
        message_id = delivery.message.correlation_id
        if delivery.settled is not None:  # acked just before its task ran: nothing left to settle
            self.stats.dropped += 1
            log.error("message %s from %s dropped: acked before its task ran, and no dead letter could be "
                      "kept (%s)", message_id, delivery.queue, exc)
        elif ran:
            self.stats.dropped += 1
            log.error("message %s from %s dropped: its task ran and no dead letter could be kept (%s); it is "
                      "acked so that it does not run again", message_id, delivery.queue, exc)
            delivery.settle(Settle.ACK)
        elif not delivery.redelivered:
            log.error("could not dead-letter message %s (%s); returning it to %s once", message_id, exc,
                      delivery.queue)
            self._requeue(delivery)
        else:
            log.error("could not dead-letter message %s (%s); refusing it", message_id, exc)
            delivery.settle(Settle.REJECT)

    async def _internal_error(self, delivery: Delivery, exc: BaseException, job: Job | None, ran: bool) -> None:
        """A bug or the unexpected: FAILURE (with the reason) for whoever waits, unless
        the task's final state was stored already; then the dead letters. A delivery
        that cannot be settled any more is left to the broker, which redelivers it,
        except one acked before its task ran (acks_late off): nothing would redeliver
        that one, so its FAILURE is stored and a copy dead-lettered all the same (tried
        for longer, as everything such a task produces)."""
        self.stats.internal_errors += 1
        log.error("internal error while handling message %s from %s (%s)", delivery.message.correlation_id,
                  delivery.queue, "after its task ran" if ran else "before its task ran", exc_info=exc)
        unreported_early = job is not None and job.acked_early and not job.reported
        if not delivery.alive and not unreported_early:
            return
        reason = f"internal error: {type(exc).__name__}: {exc}"
        try:
            if not (job is not None and job.reported) and not await self._fail_for_waiters(
                    delivery, _error_payload(exc, reason), job.message if job is not None else None):
                return
            await self._dead_letter(delivery, reason, ran=ran)
        except Exception:  # noqa: BLE001 - the last resort must not raise
            log.exception("could not dead-letter message %s", delivery.message.correlation_id)
            if delivery.alive:
                delivery.settle(Settle.REQUEUE if not (ran or delivery.redelivered) else Settle.REJECT)

    # -- results and canvas -------------------------------------------------------------
    def _wants_result(self, message: TaskMessage) -> bool:
        return not message.ignore_result and (self._stores_every_result or message.reply_to is not None)

    def _meta(self, message: TaskMessage, delivery: Delivery, state: str, result: Any = None,
              traceback: str | None = None) -> ResultMeta:
        return ResultMeta(message.id, state, result, traceback, name=message.task, args=message.args,
                          kwargs=message.kwargs, worker=self.config.hostname, retries=message.retries,
                          queue=delivery.routing_key, reply_to=message.reply_to, group_id=message.group,
                          parent_id=message.parent_id)

    async def _store(self, job: Job, state: str, result: Any = None, traceback: str | None = None) -> bool:
        """Store one state of the job's task; False when its channel went away first."""
        meta = self._meta(job.message, job.delivery, state, result, traceback)
        return await self._reliably(job.delivery, "result", lambda: self.store.store(meta))

    async def _chord_part(self, job: Job, state: str, result: Any) -> bool:
        """Count a chord header task; the one that completes the chord sends its body
        (or, when a part failed, fails it with Celery's ChordError). False when the
        delivery's channel went away first."""
        message = job.message
        body = message.embed["chord"]
        size = body.get("chord_size") if isinstance(body, dict) else None
        box: dict[str, Any] = {}

        async def count() -> None:
            box["ready"] = await self.store.chord_part_return(str(message.group), message.id, message.group_index,
                                                              state, result, size)

        if not message.group:
            await self._keep_copy(job.delivery, "canvas: a chord header task without a group id")
            return True
        if not await self._reliably(job.delivery, "chord count", count):
            return False
        ready = box.get("ready")
        if ready is None:
            return True
        error = ready.error_payload()
        if error is None:
            await self._send_follower(job, body, ready.values())
        else:
            await self._fail_signature(job, body, error)
        await self._reliably(job.delivery, "chord completion", lambda: self.store.chord_complete(ready))
        return True

    async def _continue_canvas(self, job: Job, value: Any) -> None:
        """Celery's chain and link: the next signature (the chain's last entry, as
        Celery stores it reversed) and each callback get the result prepended to
        their args, unless immutable. Published before the ack, so a crash repeats,
        never loses."""
        message = job.message
        chain = list(message.embed.get("chain") or [])
        if chain:
            step = chain.pop()
            await self._send_follower(job, step, value, rest_of_chain=chain)
        for signature in message.embed.get("callbacks") or []:
            await self._send_follower(job, signature, value)

    async def _on_failure_canvas(self, job: Job, payload: Any, traceback: str | None) -> None:
        """A failed task: its errbacks are sent (with its id, as Celery sends them to
        another process), and the rest of its chain fails too, so nobody waits
        forever for the chain's last result."""
        message = job.message
        for errback in message.embed.get("errbacks") or []:
            await self._send_follower(job, errback, message.id)
        for step in message.embed.get("chain") or []:
            await self._fail_signature(job, step, payload, traceback)

    async def _send_follower(self, job: Job, signature: Any, value: Any, rest_of_chain: list | None = None) -> None:
        """Publish a chain step, callback, errback or chord body with `value` first in
        its args (unless immutable); a chain step carries the rest of its chain. One
        that cannot be sent (a malformed signature included) leaves a dead-lettered
        copy of this message with the reason; the task itself is not run again."""
        try:
            if rest_of_chain:
                signature = Signature.from_dict(signature).set(chain=rest_of_chain)
            destination, wire, _ = prepare_signature(self.follow, signature, result=value, prepend=True,
                                                     parent=job.message)
            await self._reliably(job.delivery, "follow-up task", lambda: self.port.publish(
                destination.exchange, destination.routing_key, wire))
        except (AmqtaskError, ValueError, TypeError, KeyError) as exc:
            log.error("task %s[%s]: could not send the next task of its canvas: %s", job.message.task,
                      job.message.id, exc)
            await self._keep_copy(job.delivery, f"canvas: next task not sent: {type(exc).__name__}: {exc}")

    async def _fail_signature(self, job: Job, signature: Any, payload: Any, traceback: str | None = None) -> None:
        """Store FAILURE for a signature that will not run (its task id is known from
        its options), and send its errbacks."""
        try:
            sig = Signature.from_dict(signature)
        except AmqtaskError:
            return
        task_id = sig.options.get("task_id")
        if isinstance(task_id, str) and task_id:
            meta = ResultMeta(task_id, FAILURE, payload, traceback, name=sig.task, worker=self.config.hostname,
                              reply_to=sig.options.get("reply_to"), parent_id=job.message.id)
            await self._reliably(job.delivery, "result", lambda: self.store.store(meta))
        for errback in sig.options.get("link_error") or []:
            await self._send_follower(job, errback, task_id or job.message.id)

    async def _keep_copy(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter a copy of a message whose task ran, without settling it."""
        copy = self._dead_copy(delivery, reason)
        try:
            await self._reliably(delivery, "dead letter", lambda: self.port.dead_letter(
                delivery.queue, copy, routing_key=delivery.routing_key))
            self.stats.dead_lettered += 1
        except (UnroutableError, NackError) as exc:
            log.error("could not keep a copy of message %s: %s", delivery.message.correlation_id, exc)

    def _dead_copy(self, delivery: Delivery, reason: str) -> WireMessage:
        """The message as it is kept in the dead letters: why, from where, when, by whom."""
        headers = {k: v for k, v in delivery.message.headers.items() if k not in DEATH_HEADERS}
        headers.update({REASON_HEADER: reason[:1000], "x-amqtask-queue": delivery.queue,
                        "x-amqtask-failed-at": self.now().isoformat(), "x-amqtask-worker": self.config.hostname})
        return replace(delivery.message, headers=headers, delivery_mode=2)

    # -- the broker ------------------------------------------------------------------
    async def _reliably(self, delivery: Delivery, what: str, operation: Callable[[], Any]) -> bool:
        """Run a publish or a result store until it succeeds, while `delivery` can
        still be settled. False when its channel went away meanwhile (the broker
        redelivers it), after a few tries when the worker is stopping (likewise), or,
        for a delivery acked early, after ACKED_EARLY_ATTEMPTS tries (lost: nothing
        redelivers it). Unroutable and nacked publishes raise: retrying would not
        change the broker's mind."""
        for attempt in itertools.count():
            try:
                await operation()
                return True
            except (UnroutableError, NackError):
                raise
            except (PublishError, BackendUnavailable) as exc:
                if self._give_up(delivery, attempt):
                    self._given_up(delivery, what, exc, attempt + 1)
                    return False
                delay = REPUBLISH_BACKOFF[min(attempt, len(REPUBLISH_BACKOFF) - 1)]
                log.warning("the %s for message %s could not be sent (%s); retrying in %gs%s", what,
                            delivery.message.correlation_id, exc, delay,
                            "" if delivery.settled is not None else ", the message stays unacknowledged meanwhile")
                await asyncio.sleep(delay)
        return False

    def _give_up(self, delivery: Delivery, attempt: int) -> bool:
        """Whether to stop trying after attempt number `attempt` (0: the first) failed."""
        if delivery.settled is not None:  # acked just before its task ran: only these tries bring it back
            return attempt + 1 >= ACKED_EARLY_ATTEMPTS
        if not delivery.alive:  # its channel is gone: the broker redelivers the message
            return True
        return self.stopping and attempt >= len(REPUBLISH_BACKOFF)

    def _given_up(self, delivery: Delivery, what: str, exc: Exception, attempts: int) -> None:
        message_id = delivery.message.correlation_id
        if delivery.settled is not None:
            self.stats.results_lost += 1
            log.error("the %s for message %s could not be sent in %d attempts (%s); the message was acknowledged "
                      "before its task ran (acks_late off), so the %s is lost", what, message_id, attempts, exc, what)
        else:
            log.warning("could not publish the %s for message %s (%s); the broker will redeliver it", what,
                        message_id, exc)

    def _ack(self, delivery: Delivery) -> None:
        if delivery.settled is None:
            delivery.settle(Settle.ACK)

    def _requeue(self, delivery: Delivery) -> bool:
        """Back to its queue; False when it was settled already (acked early) or could not be."""
        if delivery.settled is None and delivery.settle(Settle.REQUEUE):
            self.stats.requeued += 1
            return True
        return False


class _JobStart:
    """Starting one job, the moment a pool slot takes it (see pools.JobStart): from a
    pool thread for most jobs, so a busy worker does not wake its event loop to start
    each task."""

    __slots__ = ("handler", "job")

    def __init__(self, handler: Handler, job: Job) -> None:
        self.handler = handler
        self.job = job

    def now(self) -> object:
        handler, job = self.handler, self.job
        if handler.waiting.pop(job.delivery, None) is None:
            return WITHDRAWN
        if handler.stopping or not job.delivery.alive:
            return STOPPING
        if job.message.id in handler.revoked:
            return REVOKED_WAITING
        if not handler._may_start_one():
            return STOPPING  # this process has run its share: back to the queue for the next one
        if handler._starts_on_the_loop(job):
            return NEEDS_LOOP
        handler._mark_started(job)
        return None

    async def on_loop(self) -> str | None:
        handler, job = self.handler, self.job
        if handler.stopping or not job.delivery.alive:
            return STOPPING
        if job.options.acks_late is False:
            # Celery's early ack: just before the task starts, never for a whole window.
            if not job.delivery.settle(Settle.ACK):
                return WITHDRAWN  # the channel is gone: the broker redelivers it
            job.acked_early = True
        if job.task.track_started and handler._wants_result(job.message):
            # What Celery's mark_as_started stores, so a Celery client reads the same.
            await handler._store(job, STARTED, {"pid": os.getpid(), "hostname": handler.config.hostname})
        handler._mark_started(job)
        return None


def _stored_state(outcome: Outcome) -> tuple[str, Any]:
    """The result state and value a run leaves: a rejected task or a lost worker is
    a FAILURE to whoever waits for it."""
    if outcome.state == SUCCESS:
        return SUCCESS, outcome.value
    if outcome.state == RETRY:
        return RETRY, outcome.exc_payload
    if outcome.state == WORKER_LOST:
        return FAILURE, outcome.exc_payload or exception_payload(WorkerLostError(outcome.reason))
    if outcome.state == REJECT:
        return FAILURE, {"exc_type": "Reject", "exc_message": [outcome.reason], "exc_module": "celery.exceptions"}
    return FAILURE, outcome.exc_payload


def _error_payload(exc: BaseException, reason: str) -> dict[str, Any]:
    """`exc` in Celery's exception form, its message the reason the worker gives."""
    return {**exception_payload(exc), "exc_message": [reason]}


def _reply_address(wire: WireMessage, message: TaskMessage | None) -> tuple[str | None, str | None]:
    """(task id, reply_to) of a message, read as far as it can be read."""
    if message is not None:
        return message.id, message.reply_to
    task_id = wire.headers.get("id") if isinstance(wire.headers, Mapping) else None
    task_id = task_id if isinstance(task_id, str) and task_id else wire.correlation_id
    return task_id, wire.reply_to


def _compression_name(content_type: Any) -> str | None:
    from ..serializers import COMPRESSION_BY_TYPE

    if isinstance(content_type, str) and content_type in COMPRESSION_BY_TYPE:
        return COMPRESSION_BY_TYPE[content_type][0]
    return None
