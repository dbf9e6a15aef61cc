"""Router + protocol + transport: turns a call into a confirmed message in a queue."""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import signals
from .amqp.port import AsyncPublisher
from .amqp.blocking import BlockingTransport
from .errors import RoutingError
from .protocol import TaskMessage, WireMessage, encode_task, new_task_id, utcnow
from .results.base import ResultBackend
from .router import Destination, Router
from .serializers import Codec
from .settings import Settings, TaskOptions


@dataclass(frozen=True)
class CallOptions:
    """Options given at call time (apply_async); None means "not given"."""

    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: dt.datetime | None = None
    expires: float | dt.datetime | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    serializer: str | None = None
    compression: str | None = None
    task_id: str | None = None
    ignore_result: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    reply_to: str | None = None
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    embed: Mapping[str, Any] | None = None  # canvas: callbacks, errbacks, chain, chord (Celery's body[2])


@dataclass(frozen=True)
class Sent:
    task_id: str
    task_name: str
    destination: Destination


class Publisher:
    def __init__(self, settings: Settings, router: Router, transport: BlockingTransport | None = None,
                 results: ResultBackend | None = None, async_transport: AsyncPublisher | None = None) -> None:
        self.settings = settings
        self.router = router
        self.results = results
        self.codec = Codec(settings.broker.accept_content)
        # Built here, not on first use (it connects only when used): threads sending
        # their first tasks at once share one connection.
        self.transport = transport if transport is not None else BlockingTransport(settings.broker)
        self._async_transport = async_transport

    def prepare(self, task_name: str, args: tuple | list = (), kwargs: Mapping[str, Any] | None = None, *,
                call: CallOptions = CallOptions(), task_options: TaskOptions = TaskOptions()
                ) -> tuple[Destination, WireMessage, str]:
        """Resolve destination and options (call > task decorator > routing.yaml >
        defaults) and encode the message. Pure: nothing is sent."""
        options = self.router.effective_options(task_name, task_options)
        destination = self._destination(task_name, call)
        now = utcnow()
        eta = call.eta
        if eta is None and call.countdown is not None:
            eta = now + dt.timedelta(seconds=call.countdown)
        expires = call.expires if call.expires is not None else options.expires
        if isinstance(expires, (int, float)):
            expires = now + dt.timedelta(seconds=expires)
        priority = next((p for p in (call.priority, destination.priority, options.priority) if p is not None), None)
        task_id = call.task_id or new_task_id()
        ignore_result = bool(call.ignore_result if call.ignore_result is not None else options.ignore_result)
        reply_to = call.reply_to
        if reply_to is None and self.results is not None and not ignore_result:
            reply_to = self.results.expect(task_id)
        message = TaskMessage(
            task=task_name,
            id=task_id,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            root_id=call.root_id,
            parent_id=call.parent_id,
            retries=call.retries,
            eta=eta,
            expires=expires,
            time_limit=call.time_limit if call.time_limit is not None else options.time_limit,
            soft_time_limit=call.soft_time_limit if call.soft_time_limit is not None else options.soft_time_limit,
            ignore_result=ignore_result,
            reply_to=reply_to,
            priority=priority,
            extra_headers=dict(call.headers),
            **({"embed": call.embed} if call.embed else {}),
        )
        wire = encode_task(
            message,
            self.codec,
            serializer=call.serializer or options.serializer or self.settings.defaults.serializer,
            compression=call.compression or options.compression or self.settings.defaults.compression,
            persistent=self.settings.defaults.persistent,
        )
        if destination.headers:
            # Routing headers for a headers exchange travel with the message.
            wire = WireMessage(**{**wire.__dict__, "headers": {**destination.headers, **wire.headers}})
        return destination, wire, task_id

    def _destination(self, task_name: str, call: CallOptions) -> Destination:
        if call.queue is not None and call.exchange is None and call.routing_key is None:
            return self.router.destination_for_queue(call.queue)
        routed = self.router.route(task_name)
        if call.exchange is None and call.routing_key is None:
            return routed
        exchange = call.exchange if call.exchange is not None else routed.exchange
        if exchange and exchange not in self.settings.topology.exchanges:
            raise RoutingError(f"exchange {exchange!r} is not declared in {self.settings.source}")
        routing_key = call.routing_key if call.routing_key is not None else routed.routing_key
        return Destination(exchange, routing_key, routed.headers, routed.priority)

    def send(self, task_name: str, args: tuple | list = (), kwargs: Mapping[str, Any] | None = None, *,
             call: CallOptions = CallOptions(), task_options: TaskOptions = TaskOptions()) -> Sent:
        destination, wire, task_id = self.prepare(task_name, args, kwargs, call=call, task_options=task_options)
        wire = signals.before_publish(task_name, args, kwargs, destination, wire,
                                      retries=self.settings.broker.publish_retries)
        if wire.reply_to and self.results is not None:
            self.results.ensure_queue()
        self.transport.publish(destination.exchange, destination.routing_key, wire)
        signals.after_publish(task_name, args, kwargs, destination, wire)
        return Sent(task_id, task_name, destination)

    async def send_async(self, task_name: str, args: tuple | list = (), kwargs: Mapping[str, Any] | None = None, *,
                         call: CallOptions = CallOptions(), task_options: TaskOptions = TaskOptions()) -> Sent:
        destination, wire, task_id = self.prepare(task_name, args, kwargs, call=call, task_options=task_options)
        wire = signals.before_publish(task_name, args, kwargs, destination, wire,
                                      retries=self.settings.broker.publish_retries)
        if wire.reply_to and self.results is not None:
            self.results.ensure_queue()  # blocks once, on the first send of this client
        if self._async_transport is None:
            self._async_transport = AsyncPublisher(self.settings.broker, name=f"amqtask async publisher pid {os.getpid()}")
        await self._async_transport.publish(destination.exchange, destination.routing_key, wire)
        signals.after_publish(task_name, args, kwargs, destination, wire)
        return Sent(task_id, task_name, destination)

    def close(self) -> None:
        self.transport.close()
        if self.results is not None:
            self.results.close()

    async def aclose(self) -> None:
        if self._async_transport is not None:
            await self._async_transport.close()
            self._async_transport = None
