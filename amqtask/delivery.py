"""The seam between the handler and whatever carries messages.

An adapter (RabbitMQ in `amqtask.amqp.consumer`, memory in `amqtask.testing`) turns
each incoming message into a `Delivery` once and hands it to the handler, together
with a `PublishPort` for what the handler must send. The handler never sees a
channel, a frame or a delivery tag.
"""
from __future__ import annotations

import enum
import logging
from typing import Callable, Protocol

from .protocol import WireMessage

log = logging.getLogger("amqtask.worker")


class Settle(enum.Enum):
    """How a delivery ends. Each delivery is settled exactly once."""

    ACK = "ack"  # done with: run, parked, dead-lettered by the worker, revoked, a duplicate
    REQUEUE = "requeue"  # back to its queue, not run (shutdown, lost worker with reject_on_worker_lost)
    REJECT = "reject"  # refused without requeue: the broker dead-letters it if the queue has a DLX


class Delivery:
    """One message as the broker delivered it, and the way to settle it.

    `settle()` passes the outcome to the adapter the first time it is called and
    refuses (logging the bug) every later call, so no delivery is ever acked twice
    or requeued after an ack (RabbitMQ answers either with a channel error, which
    would lose every other message in flight on that channel)."""

    __slots__ = ("message", "queue", "exchange", "routing_key", "redelivered", "settled", "_settle", "_alive")

    def __init__(self, message: WireMessage, queue: str, settle: Callable[[Settle], bool], *,
                 exchange: str = "", routing_key: str = "", redelivered: bool = False,
                 alive: Callable[[], bool] = lambda: True) -> None:
        self.message = message
        self.queue = queue
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered
        self.settled: Settle | None = None
        self._settle = settle
        self._alive = alive

    def settle(self, outcome: Settle) -> bool:
        """Settle once. False when it could not be (settled before, or the channel it
        came on is gone: the broker then redelivers it)."""
        if self.settled is not None:
            log.error("message %s from %s settled twice (%s, then %s); the second is ignored",
                      self.message.correlation_id, self.queue, self.settled.value, outcome.value)
            return False
        self.settled = outcome
        if not self._alive():
            return False  # its channel is gone: the broker has requeued it already
        return self._settle(outcome)

    @property
    def alive(self) -> bool:
        """Whether it can still be settled: false once the channel it came on closed
        (the broker has requeued it and will deliver it again)."""
        return self.settled is None and self._alive()


class PublishPort(Protocol):
    """What the handler may send. Every method waits for the broker's confirm (with
    a timeout) and raises PublishError, UnroutableError or NackError otherwise."""

    async def publish(self, exchange: str, routing_key: str, message: WireMessage, *,
                      mandatory: bool = True) -> None:
        """Publish `message` as it is."""

    async def park(self, queue: str, message: WireMessage, delay: float) -> None:
        """Hold `message` in the broker for `delay` seconds, then deliver it to `queue`."""

    async def dead_letter(self, queue: str, message: WireMessage, *, routing_key: str = "") -> None:
        """Keep `message` (its headers say why) where an operator finds it: the
        queue's dead-letter exchange if it has one and it routes (with the queue's
        dead-letter routing key, else `routing_key`, the one it was delivered with,
        as RabbitMQ does), else `<queue>.dead`."""
