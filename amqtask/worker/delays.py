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
"""
from __future__ import annotations

import math
from urllib.parse import quote

from ..topology.model import Binding, Exchange, Queue, Topology

LEVELS = 32
MAX_DELAY_MS = 2**LEVELS - 1
PREFIX = "amqtask.delay"
DELIVER = f"{PREFIX}.deliver"
LOST = f"{PREFIX}.lost"  # what the deliver exchange cannot route (queue deleted meanwhile)


def level_name(n: int) -> str:
    return f"{PREFIX}.{n:02d}"


def encode_queue(queue: str) -> str:
    """One topic word for a queue name: no dots or wildcards survive."""
    return quote(queue, safe="").replace(".", "%2E").replace("*", "%2A")


def delay_topology() -> Topology:
    exchanges = [Exchange(DELIVER, "topic", alternate_exchange=LOST), Exchange(LOST, "fanout")]
    queues = [Queue(LOST, arguments={})]
    bindings = [Binding(LOST, LOST)]
    for n in range(LEVELS):
        name = level_name(n)
        after = level_name(n - 1) if n else DELIVER
        skip = "*." * (LEVELS - 1 - n)
        exchanges.append(Exchange(name, "topic"))
        queues.append(Queue(name, arguments={"x-message-ttl": 2**n, "x-dead-letter-exchange": after}))
        bindings.append(Binding(name, name, f"{skip}1.#"))
        bindings.append(Binding(name, after, f"{skip}0.#", to_exchange=True))
    return Topology.build(exchanges, queues, bindings)


def delivery_binding(queue: str) -> Binding:
    """Bind a consumed queue to the deliver exchange so parked messages come home."""
    return Binding(DELIVER, queue, f"#.{encode_queue(queue)}")


def park_route(delay_seconds: float, queue: str) -> tuple[str, str]:
    """(exchange, routing key) that brings a message back to `queue` after the delay,
    rounded up to the millisecond so it never arrives early."""
    ms = min(MAX_DELAY_MS, max(0, math.ceil(delay_seconds * 1000)))
    bits = ".".join("1" if ms >> n & 1 else "0" for n in range(LEVELS - 1, -1, -1))
    return level_name(LEVELS - 1), f"{bits}.{encode_queue(queue)}"
