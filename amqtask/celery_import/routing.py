"""Celery's queues and routes, read through Celery's own objects, as routing.yaml
declarations and rules that send every task where Celery would.

Where Celery publishes is decided in two steps: its router (`task_routes`) picks
route options for a task name, then `send_task_message` (celery/app/amqp.py) turns
them into an exchange and a routing key. `publish_target` mirrors that second step;
the tests hold it against Celery's real publish for every seed and many generated
configurations."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ..topology.model import Binding, Exchange, Queue, Topology

QUEUE_KEYS = {  # RabbitMQ argument -> routing.yaml queue key
    "x-max-priority": "max_priority", "x-message-ttl": "message_ttl", "x-expires": "expires",
    "x-max-length": "max_length", "x-max-length-bytes": "max_length_bytes", "x-overflow": "overflow",
    "x-dead-letter-exchange": "dead_letter_exchange", "x-dead-letter-routing-key": "dead_letter_routing_key",
    "x-queue-type": "queue_type", "x-single-active-consumer": "single_active_consumer",
}
# Route keys Celery passes on to the publish, and what routing.yaml calls them.
ROUTE_OPTIONS = {"serializer": "serializer", "compression": "compression"}
_ROUTING = ("queue", "exchange", "routing_key", "exchange_type", "priority")


@dataclass(frozen=True)
class ExchangeDecl:
    name: str
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    transient: bool = False  # kombu delivery_mode=1: messages through it are not persistent


@dataclass(frozen=True)
class BindingDecl:
    exchange: str
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDecl:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    bindings: tuple[BindingDecl, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Target:
    """Where Celery publishes: exchange ('' is the default exchange) and routing key."""

    exchange: str
    routing_key: str
    queue: str | None = None  # the queue Celery meant (its route's or the default)


@dataclass(frozen=True)
class RuleDecl:
    pattern: str
    comment: str
    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None
    priority: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def publish_target(options: Mapping[str, Any], default_queue: Any, default_exchange: str,
                   default_key: str | None) -> Target:
    """The exchange and routing key Celery's send_task_message uses for router output
    `options` (a dict with `queue` as a kombu Queue, `exchange`, `routing_key`, ...)."""
    exchange = options.get("exchange")
    routing_key = options.get("routing_key")
    queue = options.get("queue")
    exchange_type = options.get("exchange_type")
    if queue is None and exchange is None:
        queue = default_queue
    queue_name = getattr(queue, "name", queue)
    if exchange_type is None:
        try:
            exchange_type = queue.exchange.type
        except AttributeError:
            exchange_type = "direct"
    if (not exchange or not routing_key) and exchange_type == "direct":
        # A direct exchange is short-circuited: straight to the queue by its name.
        exchange, routing_key = "", queue_name
    elif exchange is None:
        exchange = queue.exchange.name or default_exchange
        routing_key = routing_key or queue.routing_key or default_key
    name = getattr(exchange, "name", exchange)
    # kombu publishes a missing routing key as the empty one.
    return Target(str(name or ""), str(routing_key or ""), None if queue_name is None else str(queue_name))


def queue_decl(queue: Any) -> QueueDecl:
    """A kombu Queue as RabbitMQ sees it when kombu declares it."""
    from kombu.transport.base import to_rabbitmq_queue_arguments

    arguments = to_rabbitmq_queue_arguments(
        dict(queue.queue_arguments or {}), expires=queue.expires, message_ttl=queue.message_ttl,
        max_length=queue.max_length, max_length_bytes=queue.max_length_bytes, max_priority=queue.max_priority)
    bindings = []
    if queue.exchange is not None and queue.exchange.name:
        bindings.append(BindingDecl(queue.exchange.name, queue.routing_key or "", dict(queue.binding_arguments or {})))
    for extra in sorted(queue.bindings or (), key=str):
        if extra.exchange is not None and extra.exchange.name:
            bindings.append(BindingDecl(extra.exchange.name, extra.routing_key or "", dict(extra.arguments or {})))
    return QueueDecl(queue.name, durable=bool(queue.durable), exclusive=bool(queue.exclusive),
                     auto_delete=bool(queue.auto_delete), arguments=arguments, bindings=tuple(bindings))


def exchanges_of(queue: Any) -> Iterator[ExchangeDecl]:
    """The exchanges kombu declares along with a queue (its own and its bindings')."""
    candidates = [queue.exchange] + [b.exchange for b in sorted(queue.bindings or (), key=str)]
    for ex in candidates:
        if ex is not None and ex.name:
            yield ExchangeDecl(ex.name, ex.type or "direct", durable=bool(ex.durable),
                               auto_delete=bool(ex.auto_delete), arguments=dict(ex.arguments or {}),
                               transient=ex.delivery_mode in (1, "transient"))


def topology_of(exchanges: Mapping[str, ExchangeDecl], queues: Mapping[str, QueueDecl]) -> Topology:
    """amqtask's routing model of the declarations, to tell which queues a target reaches."""
    return Topology.build(
        [Exchange(x.name, x.type, x.durable, x.auto_delete, arguments=dict(x.arguments)) for x in exchanges.values()],
        [Queue(q.name, q.durable, q.exclusive, q.auto_delete, dict(q.arguments)) for q in queues.values()],
        [Binding(b.exchange, q.name, b.routing_key, dict(b.arguments)) for q in queues.values() for b in q.bindings],
    )


# -- task_routes, walked the way celery.app.routes.prepare and MapRoute read it ---------------

@dataclass(frozen=True)
class MapEntry:
    """One `pattern: route` of a route map, with routing.yaml's spelling of the pattern."""

    key: Any  # as written: a name, a glob, a compiled regex
    value: Any
    pattern: str
    router: int  # index of the router in task_routes


def routers(routes: Any) -> list[Any]:
    """task_routes as Celery's prepare() sees it: one router or a list of them."""
    if routes is None:
        return []
    return list(routes) if isinstance(routes, (list, tuple)) else [routes]


def is_map(router: Any) -> bool:
    return isinstance(router, (Mapping, list, tuple))


def map_entries(router: Any, index: int) -> list[MapEntry]:
    """A route map's entries in the order MapRoute tries them: every exact name
    first, then the patterns (globs with '*' and regexes) in their written order."""
    items = router.items() if isinstance(router, Mapping) else router
    exact, patterns = [], []
    for item in items:
        key, value = item  # MapRoute unpacks pairs the same way; a malformed item fails there too
        if isinstance(key, re.Pattern):
            patterns.append(MapEntry(key, value, regex_pattern(key), index))
        elif "*" in key:
            patterns.append(MapEntry(key, value, key, index))
        else:
            # Celery matches this name literally; routing.yaml would read ?, [ as a glob.
            literal = f"re:{re.escape(key)}" if any(c in key for c in "?[") else key
            exact.append(MapEntry(key, value, literal, index))
    return exact + patterns


def regex_pattern(pattern: re.Pattern) -> str:
    """A route regex as routing.yaml's `re:` rule. Celery uses `regex.match(name)`,
    which anchors at the start only; routing.yaml matches whole names, so the rest of
    the name is allowed explicitly."""
    if isinstance(pattern.pattern, bytes):
        raise ValueError("a bytes regular expression cannot match task names")
    flags = "".join(letter for flag, letter in ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"),
                                                (re.VERBOSE, "x"), (re.ASCII, "a")) if pattern.flags & flag)
    # Leading global flags, e.g. "(?i)abc", are already in pattern.flags; scoped below.
    text = re.sub(r"^\(\?[aiLmsux]+\)", "", pattern.pattern)
    return f"re:(?{flags}:{text})(?s:.*)" if flags else f"re:(?:{text})(?s:.*)"


def route_value(value: Any) -> dict[str, Any]:
    """MapRoute's reading of a route: a mapping, or else the name of a queue."""
    try:
        return dict(value)
    except ValueError:
        return {"queue": value}
