"""The client side of remote control: broadcast a command on `celery.pidbox` and
collect the replies, as Celery's `app.control` does (kombu's Mailbox._broadcast
and _collect), so amqtask's CLI reaches amqtask and Celery workers alike.

Also the event stream reader behind `amqtask events`.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
import uuid
from typing import Any, Callable, Mapping, Sequence, TypeVar

import pika
import pika.exceptions as px

from ..control.node import EXCHANGE, REPLY_EXCHANGE
from ..errors import BrokerError, BrokerUnavailable
from ..events import EVENT_EXCHANGE
from ..events.clock import LamportClock
from ..settings import BrokerSettings
from . import revoked as revoked_stream
from .params import close_quietly, pika_parameters

log = logging.getLogger("amqtask.control")
T = TypeVar("T")
JSON = "application/json"
# kombu's reply queue, as Celery configures it: expires 10 s unused, messages 300 s.
REPLY_QUEUE_ARGUMENTS = {"x-expires": 10_000, "x-message-ttl": 300_000}
# Celery's event receiver queue (celery/events/receiver.py, event_queue_ttl/expires).
EVENT_QUEUE_ARGUMENTS = {"x-message-ttl": 5_000, "x-expires": 60_000}


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """A lost connection in the middle of a command becomes one clear BrokerError."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except px.ChannelClosedByBroker as exc:
            raise BrokerError(f"the broker refused: {exc.reply_text}") from None
        except (px.AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"lost the connection to the broker: {type(exc).__name__}") from None

    return wrapper


def _connect(broker: BrokerSettings, name: str) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika_parameters(broker, name))
    except (px.AMQPError, OSError) as exc:
        raise BrokerUnavailable(f"cannot connect to the broker: {type(exc).__name__}") from None


class ControlClient:
    """One connection for sending control commands and reading their replies."""

    def __init__(self, broker: BrokerSettings, *, name: str = "amqtask control") -> None:
        self.broker = broker
        self.clock = LamportClock()
        self.oid = str(uuid.uuid4())
        self._connection = _connect(broker, name)
        self._replies: list[tuple[Mapping[str, Any], Any]] = []
        try:
            self._channel = self._connection.channel()
            self._channel.exchange_declare(EXCHANGE, "fanout", durable=False, auto_delete=False)
            self._channel.exchange_declare(REPLY_EXCHANGE, "direct", durable=False, auto_delete=False)
            reply_queue = f"{self.oid}.{REPLY_EXCHANGE}"
            self._channel.queue_declare(reply_queue, exclusive=True, auto_delete=True,
                                        arguments=REPLY_QUEUE_ARGUMENTS)
            self._channel.queue_bind(reply_queue, REPLY_EXCHANGE, self.oid)
            self._channel.basic_consume(reply_queue, self._on_reply, auto_ack=True)
        except px.ChannelClosedByBroker as exc:
            self.close()
            raise BrokerError(f"cannot set up remote control: {exc.reply_text}") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        close_quietly(self._connection)

    def _on_reply(self, channel: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        headers = props.headers or {}
        self.clock.adjust(headers.get("clock") or 0)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return
        if isinstance(payload, dict):
            self._replies.append((headers, payload))

    def broadcast(self, method: str, arguments: Mapping[str, Any] | None = None, *,
                  destination: Sequence[str] | None = None, pattern: str | None = None, matcher: str | None = None,
                  reply: bool = True, timeout: float = 1.0, limit: int | None = None) -> list[dict[str, Any]]:
        """Send `method(**arguments)` to the workers named in `destination` (all
        when None); with `reply`, wait up to `timeout` seconds (less once every named
        worker answered, or `limit` replies arrived) and return the replies, each
        {nodename: result}."""
        ticket = self.send(method, arguments, destination=destination, pattern=pattern, matcher=matcher,
                           reply=reply, timeout=timeout)
        if ticket is None:
            return []
        return self.collect(ticket, timeout, limit or (len(destination) if destination else None))

    @_translated
    def send(self, method: str, arguments: Mapping[str, Any] | None = None, *,
             destination: Sequence[str] | None = None, pattern: str | None = None, matcher: str | None = None,
             reply: bool = True, timeout: float = 1.0) -> str | None:
        """Publish one request; its ticket (for `collect`) when a reply is wanted."""
        ticket = str(uuid.uuid4()) if reply else None
        body: dict[str, Any] = {"method": method, "arguments": dict(arguments or {}),
                                "destination": list(destination) if destination else None,
                                "pattern": pattern, "matcher": matcher}
        if ticket:
            body.update(ticket=ticket, reply_to={"exchange": REPLY_EXCHANGE, "routing_key": self.oid})
        # kombu sends `expires` as a float; pika encodes floats only as 32-bit decimals,
        # too small for epoch seconds, so a whole second (rounded up) goes instead.
        headers = {"clock": self.clock.forward(), "expires": math.ceil(time.time() + timeout)}
        self._channel.basic_publish(EXCHANGE, "", json.dumps(body).encode(),
                                    pika.BasicProperties(content_type=JSON, content_encoding="utf-8",
                                                         delivery_mode=1, headers=headers))
        return ticket

    @_translated
    def collect(self, ticket: str, timeout: float, limit: int | None = None,
                done: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """The replies to `ticket` arriving within `timeout` seconds; stops early at
        `limit` replies or when `done()` says so."""
        collected: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self._connection.process_data_events(time_limit=min(remaining, 0.05))
            pending, self._replies = self._replies, []
            # kombu's rule: a reply without a ticket header is taken as this call's
            collected.extend(payload for headers, payload in pending if headers.get("ticket", ticket) == ticket)
            if (limit is not None and len(collected) >= limit) or (done is not None and done()):
                break
        return collected

    @_translated
    def record_revoked(self, stream: str, ids: Sequence[str], *, by: str) -> None:
        """Append revocations to the revoked stream, confirmed, so that workers that
        start later honour them too."""
        channel = self._connection.channel()
        try:
            revoked_stream.declare_stream(channel, stream)
            channel.confirm_delivery()
            for body in revoked_stream.entries(ids, by=by):
                channel.basic_publish("", stream, body, pika.BasicProperties(content_type=JSON, delivery_mode=2))
        except px.ChannelClosedByBroker as exc:
            raise BrokerError(f"cannot record revoked ids in stream {stream!r}: {exc.reply_text}") from None
        finally:
            if channel.is_open:
                channel.close()


def read_events(broker: BrokerSettings, on_event: Callable[[dict[str, Any]], None], *,
                stop: threading.Event, wakeup: bool = True, name: str = "amqtask events",
                ready: threading.Event | None = None) -> None:
    """Call `on_event` with every event on `celeryev` until `stop` is set, reading
    from a queue of our own as Celery's receiver does (`celeryev.<uuid>`, bound with
    '#', messages kept 5 s, the queue 60 s after we leave). A `task.multi` list is
    split into its events. With `wakeup`, workers are first asked for a heartbeat.
    `ready` is set once the queue is bound (no event published later is missed)."""
    connection = _connect(broker, name)
    try:
        channel = connection.channel()
        channel.exchange_declare(EVENT_EXCHANGE, "topic", durable=True, auto_delete=False)
        queue = f"celeryev.{uuid.uuid4()}"
        channel.queue_declare(queue, exclusive=True, auto_delete=True, arguments=EVENT_QUEUE_ARGUMENTS)
        channel.queue_bind(queue, EVENT_EXCHANGE, "#")

        def deliver(ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                return
            for event in payload if isinstance(payload, list) else [payload]:
                if isinstance(event, dict) and isinstance(event.get("type"), str):
                    on_event(event)

        channel.basic_consume(queue, deliver, auto_ack=True)
        if ready is not None:
            ready.set()
        if wakeup:
            channel.exchange_declare(EXCHANGE, "fanout", durable=False, auto_delete=False)
            channel.basic_publish(EXCHANGE, "", json.dumps({"method": "heartbeat", "arguments": {},
                                                            "destination": None, "pattern": None,
                                                            "matcher": None}).encode(),
                                  pika.BasicProperties(content_type=JSON, delivery_mode=1))
        while not stop.is_set():
            connection.process_data_events(time_limit=0.2)
    except px.ChannelClosedByBroker as exc:
        raise BrokerError(f"cannot read events: {exc.reply_text}") from None
    finally:
        close_quietly(connection)
