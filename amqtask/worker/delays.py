"""Delays held by the broker, never by a worker.

A message that must wait (countdown, eta, retry backoff, rate limit) is published
to a cascade of 32 topic exchanges, one per bit of the delay in milliseconds.
Level n's exchange sends the message into a queue whose TTL is 2**n ms when bit n
of its routing key is 1, or straight on to level n-1 when it is 0; the queue
dead-letters expired messages to level n-1. Every queue holds messages of one TTL,
so expiry order is queue order and nothing blocks the head. After level 0 the
`deliver` exchange routes on the last word of the routing key, the destination
queue's name, back to that queue. The longest single hop is 2**32-1 ms (49 days);
a longer delay is parked again on arrival.

There are two cascades. A classic task queue's messages wait in classic queues
(`amqtask.delay.*`). A quorum task queue's wait in quorum queues
(`amqtask.delay.q.*`), replicated like the task queue, so a lost node loses no
countdown, eta or retry: each level expires messages with at-least-once
dead-lettering (RabbitMQ 3.10+, which requires `x-overflow: reject-publish`), so a
message leaves a level only once the next one has confirmed it. A quorum task
queue's `.dead` queue is quorum too, and its `x-delivery-limit` (how many times the
broker hands a message out before giving up on it) makes the worker dead-letter a
message that reaches it, with the reason, rather than let RabbitMQ drop it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote

from ..topology.model import Binding, Exchange, Queue, Topology

LEVELS = 32
MAX_DELAY_MS = 2**LEVELS - 1
DEAD_SUFFIX = ".dead"
MAX_ROUTING_KEY_BYTES = 255  # AMQP's short string
DELIVERY_LIMIT = "x-delivery-limit"
DELIVERY_COUNT = "x-delivery-count"  # set by a quorum queue on a message handed out again


def encode_queue(queue: str) -> str:
    """One topic word for a queue name: no dots or wildcards survive."""
    return quote(queue, safe="").replace(".", "%2E").replace("*", "%2A")


@dataclass(frozen=True)
class Cascade:
    """The delay exchanges and TTL queues under one name prefix; `arguments` are
    added to every queue of it (the queue type and its dead-lettering)."""

    prefix: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    @property
    def deliver(self) -> str:
        return f"{self.prefix}.deliver"

    @property
    def lost(self) -> str:
        """What the deliver exchange cannot route (the queue was deleted meanwhile)."""
        return f"{self.prefix}.lost"

    def level_name(self, n: int) -> str:
        return f"{self.prefix}.{n:02d}"

    def topology(self) -> Topology:
        exchanges = [Exchange(self.deliver, "topic", alternate_exchange=self.lost), Exchange(self.lost, "fanout")]
        kind = {k: v for k, v in self.arguments.items() if k == "x-queue-type"}
        queues = [Queue(self.lost, arguments=kind)]
        bindings = [Binding(self.lost, self.lost)]
        for n in range(LEVELS):
            name = self.level_name(n)
            after = self.level_name(n - 1) if n else self.deliver
            skip = "*." * (LEVELS - 1 - n)
            exchanges.append(Exchange(name, "topic"))
            queues.append(Queue(name, arguments={**self.arguments, "x-message-ttl": 2**n,
                                                 "x-dead-letter-exchange": after}))
            bindings.append(Binding(name, name, f"{skip}1.#"))
            bindings.append(Binding(name, after, f"{skip}0.#", to_exchange=True))
        return Topology.build(exchanges, queues, bindings)

    def delivery_binding(self, queue: str) -> Binding:
        """Bind a consumed queue to the deliver exchange so parked messages come home."""
        return Binding(self.deliver, queue, f"#.{encode_queue(queue)}")

    def park_route(self, delay_seconds: float, queue: str) -> tuple[str, str]:
        """(exchange, routing key) that brings a message back to `queue` after the delay,
        rounded up to the millisecond so it never arrives early."""
        ms = min(MAX_DELAY_MS, max(0, math.ceil(delay_seconds * 1000)))
        bits = ".".join("1" if ms >> n & 1 else "0" for n in range(LEVELS - 1, -1, -1))
        return self.level_name(LEVELS - 1), f"{bits}.{encode_queue(queue)}"


CLASSIC = Cascade("amqtask.delay")
QUORUM = Cascade("amqtask.delay.q", {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                                     "x-overflow": "reject-publish"})
CASCADES = (CLASSIC, QUORUM)
# The classic cascade's names, as before there were two.
PREFIX, DELIVER, LOST = CLASSIC.prefix, CLASSIC.deliver, CLASSIC.lost
level_name, delay_topology = CLASSIC.level_name, CLASSIC.topology
delivery_binding, park_route = CLASSIC.delivery_binding, CLASSIC.park_route


def unparkable_reason(queue: str) -> str | None:
    """Why messages for `queue` cannot wait in a delay cascade, or None. The queue's
    name, encoded, is the last word of the park routing key, which AMQP limits to
    255 bytes (both cascades use the same key)."""
    size = len(CLASSIC.park_route(0, queue)[1].encode())
    if size <= MAX_ROUTING_KEY_BYTES:
        return None
    return (f"queue name too long to be parked: its delay routing key would be {size} bytes (AMQP allows "
            f"{MAX_ROUTING_KEY_BYTES}); countdown, eta, retries and rate limits need a shorter queue name")


def _spec(queue: str | Queue, topology: Topology | None) -> Queue:
    if isinstance(queue, Queue):
        return queue
    return (topology.queues.get(queue) if topology is not None else None) or Queue(queue)


def cascade_for(queue: str | Queue, topology: Topology | None = None) -> Cascade:
    """Where `queue`'s messages wait: in quorum queues when it is a quorum queue."""
    return QUORUM if _spec(queue, topology).queue_type == "quorum" else CLASSIC


def dead_letter_queue_for(queue: str | Queue, topology: Topology | None = None) -> Queue:
    """`<queue>.dead`, where a worker keeps the messages it will not run: a quorum
    queue when `queue` is one (replicated as the queue itself is), else classic."""
    spec = _spec(queue, topology)
    arguments = {"x-queue-type": "quorum"} if spec.queue_type == "quorum" else {}
    return Queue(spec.name + DEAD_SUFFIX, arguments=arguments)


def delivery_limit_reason(queue: str | Queue, headers: Mapping[str, Any] | None,
                          topology: Topology | None = None) -> str | None:
    """Why a message must not be run again, or None: a quorum queue with an
    `x-delivery-limit` has handed it out that many times already. Its next return
    would make RabbitMQ drop it (or dead-letter it without a reason)."""
    spec = _spec(queue, topology)
    limit = spec.arguments.get(DELIVERY_LIMIT)
    count = (headers or {}).get(DELIVERY_COUNT)
    if spec.queue_type != "quorum" or not isinstance(limit, int) or not isinstance(count, int):
        return None
    if count < limit:
        return None
    return (f"delivery limit reached: handed out {count + 1} times, and {spec.name} has "
            f"{DELIVERY_LIMIT} {limit} (a poison message? each delivery ended without an ack)")
