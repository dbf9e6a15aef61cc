"""A worker's monitor link: Celery events out, Celery remote control in.

One thread, one connection of its own (pika), two channels:

- events: drains the EventDispatcher's buffer onto the topic exchange `celeryev`
  (routing key = event type with '-' -> '.', JSON, header `hostname`, transient),
  and sends worker-online / worker-heartbeat (every `interval` s) / worker-offline;
- control: consumes `<nodename>.celery.pidbox` (exclusive, auto-delete, bound to the
  fanout `celery.pidbox`, no_ack) and publishes each reply to `reply.celery.pidbox`;
  with `worker.control: off`, holds that queue unbound, as the node's name lock.

Why its own thread and connection: nothing the broker does to this link can slow
the worker. When RabbitMQ blocks the connection (connection.blocked: a memory or
disk alarm), this link publishes nothing, and events are dropped and counted
instead of queued; a full buffer drops too. The worker's consuming connection and
its acks are never behind an event publish. The exclusive control queue lives as
long as this process: a second worker with the same name is refused (405
RESOURCE_LOCKED) at start. It is the node's name lock in every `worker.control`
mode: with control off the same queue is declared, bound to nothing (no command
reaches it) and consumed by a consumer that drops what is published to it
directly. Why that queue and not a marker of its own: one lock whatever the mode,
so a worker with control off and one with control on cannot share a name either
(nor can a Celery worker, which declares the same queue); and why consumed: a
queue with Celery's `x-expires` that nobody consumes is deleted by the broker
after 10 s, and the lock with it. A lost connection is re-opened with backoff;
events sent meanwhile wait in the bounded buffer.

`WorkerMonitor.start(...)` builds all of it for a worker; see its docstring for
what the worker calls.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable

import pika
import pika.exceptions as px
from pika.adapters.blocking_connection import BlockingChannel

from ..control.commands import Context
from ..control.node import EXCHANGE, QUEUE_ARGUMENTS, REPLY_EXCHANGE, ControlNode, queue_name
from ..control.revoked import RevokedSet
from ..control.view import Runner, WorkerBusy, WorkerView, direct
from ..errors import BrokerError, BrokerUnavailable, DeclareConflict
from ..events import EVENT_EXCHANGE
from ..events.build import WORKER_HEARTBEAT, WORKER_OFFLINE, WORKER_ONLINE, EventFactory, routing_key
from ..events.clock import LamportClock
from ..events.dispatcher import EventDispatcher
from ..events.heartbeat import HeartbeatSchedule
from ..settings import BrokerSettings, MonitorSettings, Settings
from . import revoked as revoked_stream
from .params import close_quietly, pika_parameters

log = logging.getLogger("amqtask.monitor")

POLL_SECONDS = 0.1  # how long the link waits on the socket between buffer drains
BATCH = 500  # events published per drain before the socket is served again
RECONNECT_MAX = 10.0
JSON = "application/json"


class NodeNameInUse(BrokerError):
    """Another running worker already uses this node name (405 RESOURCE_LOCKED on
    its exclusive control queue)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        super().__init__(f"a worker named {hostname!r} is already running on this broker "
                         f"(its control queue {queue_name(hostname)!r} is in use); "
                         "give each worker its own name with -n")


class MonitorLink:
    """The thread and connection behind events and remote control (see the module
    docstring). `start()` returns once both are set up, or raises."""

    def __init__(self, broker: BrokerSettings, *, hostname: str, dispatcher: EventDispatcher | None = None,
                 heartbeat: HeartbeatSchedule | None = None, counts: Callable[[], Any] | None = None,
                 node: ControlNode | None = None, revoked_stream: str | None = None) -> None:
        self.broker = broker
        self.hostname = hostname
        self.dispatcher = dispatcher
        self.heartbeat = heartbeat
        self.counts = counts
        self.node = node
        self.revoked_stream = revoked_stream
        self._connection: pika.BlockingConnection | None = None
        self._events: BlockingChannel | None = None
        self._control: BlockingChannel | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._online = False
        self._thread = threading.Thread(target=self._run, name=f"amqtask-monitor {hostname}", daemon=True)
        if node is not None and revoked_stream is not None:
            node.context.persist_revoked = self._append_revoked

    # -- life cycle ------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> "MonitorLink":
        """Connect, declare, start consuming; raises NodeNameInUse, DeclareConflict
        or BrokerUnavailable if the first attempt fails."""
        self._thread.start()
        limit = timeout if timeout is not None else self.broker.connect_timeout * 2 + 5
        if not self._started.wait(limit):
            self._stopping.set()
            raise BrokerUnavailable(f"the monitor link did not connect within {limit:g}s")
        if self._startup_error is not None:
            self._thread.join(5)
            raise self._startup_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is buffered, then worker-offline, close, and end the thread."""
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.is_open

    # -- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        delay = 1.0
        first = True
        while not self._stopping.is_set():
            try:
                self._open()
                if first:
                    first = False
                    self._started.set()
                delay = 1.0
                self._serve()
            except (NodeNameInUse, DeclareConflict, BrokerUnavailable) as exc:
                if first:
                    self._fail_start(exc)
                    return
                log.warning("monitor link: %s; retrying in %gs", exc, delay)
            except (px.AMQPError, OSError) as exc:
                if first:
                    self._fail_start(BrokerUnavailable(f"cannot connect to the broker: {type(exc).__name__}"))
                    return
                log.warning("monitor link lost (%s); reconnecting in %gs", type(exc).__name__, delay)
            except Exception as exc:  # noqa: BLE001 - a bug here must not silence the node for good
                if first:
                    self._fail_start(exc)
                    return
                log.exception("monitor link failed; starting it again in %gs", delay)
            finally:
                self._drop_connection()
            self._stopping.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX)
        self._started.set()

    def _fail_start(self, exc: BaseException) -> None:
        self._startup_error = exc
        self._started.set()

    def _open(self) -> None:
        parameters = pika_parameters(self.broker, f"amqtask monitor {self.hostname} pid {os.getpid()}")
        for p in parameters:
            # The link never publishes while blocked, so it has no reason to give up
            # its connection (and its node name) during an alarm.
            p.blocked_connection_timeout = None
        try:
            self._connection = pika.BlockingConnection(parameters)
        except (px.AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"cannot connect to the broker: {type(exc).__name__}") from None
        self._connection.add_on_connection_blocked_callback(self._on_blocked)
        self._connection.add_on_connection_unblocked_callback(self._on_unblocked)
        if self.dispatcher is not None:
            self._events = self._connection.channel()
            self._declare_exchange(self._events, EVENT_EXCHANGE, "topic", durable=True)
        self._control = self._connection.channel()
        name = self._hold_node_name(self._control)
        if self.node is not None:
            self._declare_exchange(self._control, EXCHANGE, "fanout", durable=False)
            self._declare_exchange(self._control, REPLY_EXCHANGE, "direct", durable=False)
            self._control.queue_bind(name, EXCHANGE)
            self._control.basic_consume(name, self._on_control, auto_ack=True)
        else:
            self._control.basic_consume(name, self._drop_control, auto_ack=True)
        if self.heartbeat is not None:
            self.heartbeat.reset()
        self._online = False

    def _hold_node_name(self, channel: BlockingChannel) -> str:
        """Declare the node's exclusive control queue, which holds its name for as
        long as this connection lives; its name. NodeNameInUse when another holds it."""
        name = queue_name(self.hostname)
        try:
            channel.queue_declare(name, durable=False, exclusive=True, auto_delete=True, arguments=QUEUE_ARGUMENTS)
        except px.ChannelClosedByBroker as exc:
            if exc.reply_code == 405:
                raise NodeNameInUse(self.hostname) from None
            raise DeclareConflict("queue", name, exc.reply_text) from None
        return name

    def _declare_exchange(self, channel: BlockingChannel, name: str, kind: str, *, durable: bool) -> None:
        try:
            channel.exchange_declare(name, kind, durable=durable, auto_delete=False)
        except px.ChannelClosedByBroker as exc:
            raise DeclareConflict("exchange", name, exc.reply_text) from None

    def _serve(self) -> None:
        assert self._connection is not None
        while not self._stopping.is_set():
            self._maybe_heartbeat()
            self._flush()
            self._connection.process_data_events(time_limit=POLL_SECONDS)
        self._goodbye()

    def _goodbye(self) -> None:
        """On stop: what is buffered, then worker-offline."""
        self._flush(limit=None)
        if self.dispatcher is not None and self.heartbeat is not None and self.heartbeat.enabled and self._online:
            self.dispatcher.send(self._worker_event(WORKER_OFFLINE))
            self._flush(limit=None)

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._events = self._control = None
        close_quietly(connection)
        if self.dispatcher is not None:
            self.dispatcher.set_blocked(False)

    # -- events ------------------------------------------------------------------------
    def _maybe_heartbeat(self) -> None:
        if self.dispatcher is None or self.heartbeat is None or not self.heartbeat.due():
            return
        event_type = WORKER_HEARTBEAT if self._online else WORKER_ONLINE
        try:
            event = self._worker_event(event_type)
        except WorkerBusy as exc:
            log.debug("heartbeat skipped: %s", exc)
            return
        self.dispatcher.send(event)
        self._online = True

    def _worker_event(self, event_type: str) -> dict[str, Any]:
        assert self.dispatcher is not None and self.heartbeat is not None
        counts = self.counts() if self.counts is not None else None
        return self.dispatcher.factory.worker(event_type, freq=self.heartbeat.interval,
                                              active=getattr(counts, "active", 0),
                                              processed=getattr(counts, "processed", 0))

    def _flush(self, limit: int | None = BATCH) -> None:
        if self.dispatcher is None or self._events is None or self.dispatcher.blocked:
            return
        while True:
            batch = self.dispatcher.take(BATCH)
            for done, event in enumerate(batch):
                try:
                    self._events.basic_publish(
                        EVENT_EXCHANGE, routing_key(event["type"]), json.dumps(event, default=str).encode(),
                        pika.BasicProperties(content_type=JSON, content_encoding="utf-8", delivery_mode=1,
                                             headers={"hostname": self.hostname}))
                except BaseException:
                    self.dispatcher.sent(done)
                    self.dispatcher.lost(len(batch) - done)
                    raise
            self.dispatcher.sent(len(batch))
            if limit is not None or len(batch) < BATCH:
                return

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        reason = getattr(getattr(frame, "method", None), "reason", "")
        log.warning("broker blocked the monitor link (%s): events are dropped until it unblocks", reason)
        if self.dispatcher is not None:
            self.dispatcher.set_blocked(True)

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        log.info("broker unblocked the monitor link")
        if self.dispatcher is not None:
            self.dispatcher.set_blocked(False)

    # -- control -----------------------------------------------------------------------
    def _on_control(self, channel: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        assert self.node is not None
        if props.content_type not in (JSON, None):
            log.debug("ignoring a control message of content type %r", props.content_type)
            return
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            log.debug("ignoring a control message that is not JSON")
            return
        reply = self.node.handle(payload, props.headers)
        if reply is None:
            return
        if self.dispatcher is not None and self.dispatcher.blocked:
            log.warning("not replying to a control command while the broker blocks publishing")
            return
        channel.basic_publish(reply.exchange, reply.routing_key, json.dumps(reply.body, default=str).encode(),
                              pika.BasicProperties(content_type=JSON, content_encoding="utf-8", delivery_mode=1,
                                                   headers=reply.headers))

    def _drop_control(self, channel: BlockingChannel, method: Any, props: pika.BasicProperties,
                      body: bytes) -> None:
        log.debug("ignoring a message in the control queue: worker.control is off")

    def _append_revoked(self, ids: Any) -> None:
        if self._control is not None and self.revoked_stream is not None:
            revoked_stream.append(self._control, self.revoked_stream, list(ids), by=self.hostname)


class WorkerMonitor:
    """Everything a worker needs to be seen and controlled, in one object.

    At start the worker calls `WorkerMonitor.start(...)`; then, at each point of a
    message's life, `monitor.events.task_received(...)` and the other task events
    (amqtask.events.dispatcher), asks `task_id in monitor.revoked` when a task
    arrives and before it runs, and at the end calls `monitor.stop()`.
    """

    def __init__(self, *, events: EventDispatcher, revoked: RevokedSet, link: MonitorLink,
                 node: ControlNode | None) -> None:
        self.events = events
        self.revoked = revoked
        self.link = link
        self.node = node

    @classmethod
    def start(cls, settings: Settings, *, hostname: str, view: WorkerView, runner: Runner = direct,
              monitor: MonitorSettings | None = None, revoked: RevokedSet | None = None,
              clock: LamportClock | None = None, on_drop: Callable[[str, int], None] | None = None,
              started: float | None = None) -> "WorkerMonitor":
        """Build and start the link for node `hostname`.

        `view` is the worker (amqtask.control.view.WorkerView) and `runner` how to call
        it from the link's thread (`loop_runner(loop)` for an asyncio worker).
        `monitor` defaults to routing.yaml's worker settings; `revoked` to the set
        loaded from the revoked stream (RevokedStore.open), or an empty one.
        Raises NodeNameInUse when another worker has this name, BrokerUnavailable
        when the broker cannot be reached.
        """
        monitor = monitor or settings.worker.monitor
        clock = clock or LamportClock()
        if revoked is None:
            revoked = revoked_stream.RevokedStore.open(settings.broker, monitor.revoked_stream).revoked
        dispatcher = EventDispatcher(EventFactory(hostname=hostname, clock=clock), task_events=monitor.events,
                                     worker_events=monitor.heartbeat_interval > 0, on_drop=on_drop)
        heartbeat = HeartbeatSchedule(monitor.heartbeat_interval)
        node = None
        if monitor.control != "off":
            context = Context(hostname=hostname, view=view, settings=settings, revoked=revoked, clock=clock,
                              pid=os.getpid(), started=started or time.time(), runner=runner, events=dispatcher,
                              heartbeat=heartbeat)
            node = ControlNode(context, mode=monitor.control)
        link = MonitorLink(settings.broker, hostname=hostname, dispatcher=dispatcher, heartbeat=heartbeat,
                           counts=lambda: runner(view.counts), node=node, revoked_stream=monitor.revoked_stream)
        link.start()
        return cls(events=dispatcher, revoked=revoked, link=link, node=node)

    def stop(self, timeout: float = 5.0) -> None:
        """Flush buffered events, send worker-offline, close the link."""
        self.link.stop(timeout)
