"""Opening asyncio connections (aiormq), declaring on them (aiormq's channels, and
the consumer's pika channels, which take the same calls), and amqtask's WireMessage
as AMQP properties. The failover order over broker URLs is written here once; the
consumer, the publish port and the revoked-ids reader use it."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable
from urllib.parse import quote, urlencode

import aiormq
import aiormq.abc
from pamqp import commands as spec

from ..brokerurl import BrokerURL
from ..errors import BrokerUnavailable, DeclareConflict
from ..protocol import WireMessage
from ..settings import BrokerSettings
from ..topology.model import Topology
from .params import ssl_context

log = logging.getLogger("amqtask.amqp")

# Errors after which a connection (or channel) is gone and must be opened again.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError, RuntimeError,
)


def amqp_url(url: BrokerURL, broker: BrokerSettings) -> str:
    scheme = "amqps" if url.tls else "amqp"
    query = urlencode({"heartbeat": broker.heartbeat})
    return (f"{scheme}://{quote(url.username, safe='')}:{quote(url.password, safe='')}@{url.host}:{url.port}/"
            f"{quote(url.vhost, safe='')}?{query}")


def failover_order(urls: Iterable[BrokerURL], after: BrokerURL | None = None) -> list[BrokerURL]:
    """The URLs to try, in order: as configured, or starting with the one after
    `after` (a node that just failed is tried last, not first)."""
    order = list(urls)
    if after is None or after not in order:
        return order
    i = order.index(after) + 1
    return order[i:] + order[:i]


def connected_url(connection: aiormq.abc.AbstractConnection, broker: BrokerSettings) -> BrokerURL | None:
    """Which of the broker URLs `connection` went to."""
    url = getattr(connection, "url", None)
    for candidate in broker.urls:
        if url is not None and url.host == candidate.host and url.port == candidate.port:
            return candidate
    return None


async def open_connection(broker: BrokerSettings, name: str, *,
                          after: BrokerURL | None = None) -> aiormq.abc.AbstractConnection:
    """Connect to the first broker URL that answers, each tried for connect_timeout,
    beginning after `after` when given. BrokerUnavailable names every URL (password
    hidden) and why it failed."""
    errors = []
    for url in failover_order(broker.urls, after):
        extra: dict[str, Any] = {}
        if url.tls:
            extra = {"context": ssl_context(broker.tls), "server_hostname": broker.tls.server_hostname or url.host}
        try:
            return await asyncio.wait_for(
                aiormq.connect(amqp_url(url, broker), client_properties={"connection_name": name}, **extra),
                timeout=broker.connect_timeout)
        # StopAsyncIteration: aiormq's word for a peer that accepted the connection and
        # closed it during the handshake (a node refusing clients, a proxy in front of one).
        except (asyncio.TimeoutError, StopAsyncIteration, *CONNECTION_ERRORS) as exc:
            errors.append(f"{url.redacted()}: {type(exc).__name__} {exc}".strip())
    raise BrokerUnavailable("cannot connect to the broker: " + "; ".join(errors))


def properties(wire: WireMessage) -> spec.Basic.Properties:
    return spec.Basic.Properties(
        content_type=wire.content_type or None,
        content_encoding=wire.content_encoding or None,
        headers=dict(wire.headers) or None,
        delivery_mode=wire.delivery_mode,
        priority=wire.priority,
        correlation_id=wire.correlation_id,
        reply_to=wire.reply_to,
    )


async def declare(channel: aiormq.abc.AbstractChannel, topology: Topology,
                  queues: Iterable[str] | None = None) -> None:
    """Declare exchanges, the given queues (all when None) and their bindings. A 406
    conflict raises DeclareConflict naming the object (the channel is then closed)."""
    wanted = set(topology.queues) if queues is None else set(queues)
    for x in topology.exchanges.values():
        await _declaring("exchange", x.name, channel.exchange_declare(
            exchange=x.name, exchange_type=x.type, durable=x.durable, auto_delete=x.auto_delete,
            internal=x.internal, arguments=x.declare_arguments() or None))
    for q in topology.queues.values():
        if q.name in wanted:
            await _declaring("queue", q.name, channel.queue_declare(
                queue=q.name, durable=q.durable, exclusive=q.exclusive, auto_delete=q.auto_delete,
                arguments=dict(q.arguments) or None))
    for b in topology.bindings:
        arguments = dict(b.arguments) or None
        if b.to_exchange:
            if b.source in topology.exchanges and b.destination in topology.exchanges:
                await channel.exchange_bind(destination=b.destination, source=b.source, routing_key=b.routing_key,
                                            arguments=arguments)
        elif b.destination in wanted:
            await channel.queue_bind(queue=b.destination, exchange=b.source, routing_key=b.routing_key,
                                     arguments=arguments)


async def _declaring(kind: str, name: str, declaration: Any) -> Any:
    try:
        return await declaration
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise DeclareConflict(kind, name, str(exc)) from None
