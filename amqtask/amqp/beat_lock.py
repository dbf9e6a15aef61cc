"""A beat's seat in its group's election, on RabbitMQ alone (pika, blocking).

- `amqtask.beat.<group>`: a quorum queue with single active consumer holding one
  *token* message whose body is the leader's state. Every beat consumes it; the
  broker delivers only to the active consumer, so the beat holding the token leads.
  When that consumer's connection goes (a crash, kill -9, a cut network noticed by
  heartbeats), the broker returns the unacknowledged token and activates the next
  consumer, which receives it.
- `amqtask.beat.<group>.status`: a classic queue keeping the last status copy
  (max-length 1, drop-head), so `amqtask schedules` can read the state without
  touching the token.

The channel is in transaction mode: the leader publishes a tick's task messages,
the next token and the status, and acknowledges the token it held, then commits.

What that guarantees, and what it does not (https://www.rabbitmq.com/docs/semantics):
- Nothing of a tick takes effect before tx.commit, and an uncommitted transaction is
  discarded with its channel. A beat that crashes, is killed (kill -9) or has its
  connection cut before its commit reaches the broker hands over the old token, with
  none of the tick's messages sent: the next leader sends them. One whose commit the
  broker has read hands over the new token with all of them sent: the broker's
  channel handles tx.commit as one step, passing every publish and ack on to its
  queues, before it handles the loss of the connection. Crashes, kill -9 and cut
  connections are what integration/test_beat.py tries (it does not aim at the instant
  between commit and commit-ok); there no instant was sent twice or lost.
- RabbitMQ's transactions are a batch, not atomic across queues: if a broker node
  fails *during* tx.commit (the broker itself, or in a cluster the node of a task
  queue or of the token queue's leader), the commit may take effect in some queues
  and not in others. Task messages without the new token mean the next leader sends
  those runs again (same task ids: a worker that ran one drops the copy, but two
  workers may each run one); a new token without a task message means that run is
  lost. Changing the queues mid-transaction (deleting the token queue) is undefined
  too; the beat notices that case and restarts from its last committed state.

Only used from one thread at a time (the runner's own).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import pika
import pika.exceptions as px
from pika.adapters.blocking_connection import BlockingChannel

from ..errors import BrokerError, BrokerUnavailable, DeclareConflict
from ..protocol import WireMessage
from ..settings import BrokerSettings
from .blocking import CONNECTION_ERRORS, _describe, wire_properties
from .params import close_quietly, pika_parameters

log = logging.getLogger("amqtask.beat")
# A leader cut off from the broker is noticed (by it and by the broker) within about
# two heartbeats; the beat's connection uses at most this one.
MAX_HEARTBEAT = 10
PREFETCH = 100  # tokens are few; this bounds what a queue flooded with junk could push at us


def token_queue(group: str) -> str:
    return f"amqtask.beat.{group}"


def status_queue(group: str) -> str:
    return f"amqtask.beat.{group}.status"


def token_arguments() -> dict:
    return {"x-queue-type": "quorum", "x-single-active-consumer": True}


def status_arguments() -> dict:
    return {"x-max-length": 1, "x-overflow": "drop-head"}


def state_properties() -> pika.BasicProperties:
    return pika.BasicProperties(content_type="application/json", delivery_mode=2)


class LeadershipLost(BrokerError):
    """The beat's connection or channel to the broker is gone: it leads no more."""


@dataclass(frozen=True)
class Token:
    delivery_tag: int
    body: bytes


@dataclass(frozen=True)
class Returned:
    """A published task message the broker could not route (mandatory)."""

    exchange: str
    routing_key: str
    reply_text: str
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StatusRead:
    """What `amqtask schedules` sees: the last status bodies and how many beats are connected."""

    bodies: tuple[bytes, ...]
    # Consumers of the token queue as queue.declare reports them: a single-active-consumer
    # queue counts only its active one, so this is 1 while any beat runs, 0 when none does.
    beats: int


class BeatSeat:
    def __init__(self, broker: BrokerSettings, group: str, name: str) -> None:
        self.broker = broker
        self.group = group
        self.name = name
        self.token_queue = token_queue(group)
        self.status_queue = status_queue(group)
        self.bootstrapped = False  # this seat published the group's first token
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._tokens: list[Token] = []
        self._returned: list[Returned] = []
        self._cancelled = False

    def open(self, genesis: bytes, *, known: bool = False) -> None:
        """Connect, declare the queues, put a first token in an empty queue, and start
        consuming. `genesis` is an empty state (put only when no consumer could hold a
        token), or with `known` the last state this process committed (put whenever no
        token is waiting: tokens merge, so a real state can only add knowledge).
        Raises BrokerUnavailable, DeclareConflict."""
        params = pika_parameters(self.broker, f"amqtask beat {self.name}")
        for p in params:
            p.heartbeat = min(self.broker.heartbeat or MAX_HEARTBEAT, MAX_HEARTBEAT)
        try:
            self._connection = pika.BlockingConnection(params)
        except (px.AMQPError, OSError) as exc:
            shown = ", ".join(u.redacted() for u in self.broker.urls)
            raise BrokerUnavailable(f"cannot connect to the broker at {shown}: {_describe(exc)}") from None
        with _lost_on_error("opening"):
            channel = self._connection.channel()
            self._declare(channel, self.token_queue, token_arguments())
            self._declare(channel, self.status_queue, status_arguments())
            channel.add_on_return_callback(self._on_return)
            channel.add_on_cancel_callback(self._on_cancel)
            channel.tx_select()
            ok = channel.queue_declare(self.token_queue, passive=True).method
            # Only when no token is ready and no consumer could be holding one: a token
            # that exists is either ready or unacknowledged by a consumer.
            if ok.message_count == 0 and (known or ok.consumer_count == 0):
                channel.basic_publish("", self.token_queue, genesis, state_properties(), mandatory=True)
                channel.tx_commit()
                self.bootstrapped = True
            channel.basic_qos(prefetch_count=PREFETCH)
            channel.basic_consume(self.token_queue, self._on_token, auto_ack=False)
            self._channel = channel

    def _declare(self, channel: BlockingChannel, name: str, arguments: dict) -> None:
        try:
            channel.queue_declare(name, durable=True, arguments=arguments)
        except px.ChannelClosedByBroker as exc:
            raise DeclareConflict("queue", name, f"{exc.reply_code} {exc.reply_text}") from None

    def _on_token(self, channel: BlockingChannel, method, properties, body: bytes) -> None:
        self._tokens.append(Token(method.delivery_tag, body))

    def _on_cancel(self, method) -> None:
        self._cancelled = True  # the broker cancelled our consumer: the token queue was deleted

    def _on_return(self, channel: BlockingChannel, method, properties, body: bytes) -> None:
        self._returned.append(Returned(method.exchange, method.routing_key, method.reply_text,
                                       dict(properties.headers or {})))

    def poll(self, seconds: float) -> list[Token]:
        """Wait up to `seconds` for frames (heartbeats included); the tokens delivered meanwhile."""
        with _lost_on_error("waiting"):
            self._live_connection().process_data_events(time_limit=seconds)
        if self._cancelled:
            raise LeadershipLost(f"the broker cancelled the consumer of {self.token_queue!r} (queue deleted?)")
        tokens, self._tokens = self._tokens, []
        return tokens

    def ready_tokens(self) -> int:
        """Tokens waiting in the queue, not yet delivered to any consumer."""
        with _lost_on_error("inspecting the token queue"):
            count = self._live_channel().queue_declare(self.token_queue, passive=True).method.message_count
            self._live_connection().process_data_events(time_limit=0)
        return int(count)

    def commit(self, tasks: list[tuple[str, str, WireMessage]], state: bytes, ack_through: int | None
               ) -> list[Returned]:
        """In one transaction: publish the task messages (mandatory), the next token and
        the status, and acknowledge every token delivered up to `ack_through`. Returns
        the task messages the broker could not route. Raises LeadershipLost."""
        with _lost_on_error("committing a tick"):
            channel = self._live_channel()
            for exchange, routing_key, wire in tasks:
                channel.basic_publish(exchange, routing_key, wire.body, wire_properties(wire), mandatory=True)
            channel.basic_publish("", self.token_queue, state, state_properties(), mandatory=True)
            channel.basic_publish("", self.status_queue, state, state_properties())
            if ack_through is not None:
                channel.basic_ack(ack_through, multiple=True)
            channel.tx_commit()
            # Returns precede commit-ok on the wire; this hands them to _on_return.
            self._live_connection().process_data_events(time_limit=0)
        returned, self._returned = self._returned, []
        lost_token = [r for r in returned if r.routing_key == self.token_queue and not r.exchange]
        if lost_token:
            raise LeadershipLost(f"the token queue {self.token_queue!r} is gone ({lost_token[0].reply_text})")
        return [r for r in returned if not (r.routing_key == self.status_queue and not r.exchange)]

    def close(self) -> None:
        """Leave the election. A held token returns to the queue for the next beat."""
        connection, self._connection, self._channel = self._connection, None, None
        close_quietly(connection)

    def _live_connection(self) -> pika.BlockingConnection:
        if self._connection is None or not self._connection.is_open:
            raise LeadershipLost("the beat's connection to the broker is closed")
        return self._connection

    def _live_channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            raise LeadershipLost("the beat's channel to the broker is closed")
        return self._channel


@contextmanager
def _lost_on_error(what: str) -> Iterator[None]:
    """pika's connection errors, as LeadershipLost."""
    try:
        yield
    except BrokerError:
        raise
    except (px.AMQPError, *CONNECTION_ERRORS) as exc:
        raise LeadershipLost(f"connection to the broker lost while {what}: {_describe(exc)}") from None


def read_status(broker: BrokerSettings, group: str) -> StatusRead:
    """The group's last status copies and its number of connected beats, read without
    touching the token: status messages are fetched and put back (requeued)."""
    try:
        connection = pika.BlockingConnection(pika_parameters(broker, "amqtask schedules"))
    except (px.AMQPError, OSError) as exc:
        shown = ", ".join(u.redacted() for u in broker.urls)
        raise BrokerUnavailable(f"cannot connect to the broker at {shown}: {_describe(exc)}") from None
    try:
        channel = connection.channel()
        try:
            beats = channel.queue_declare(token_queue(group), passive=True).method.consumer_count
        except px.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise BrokerError(f"cannot inspect {token_queue(group)!r}: {exc.reply_text}") from None
            return StatusRead((), 0)
        try:
            channel.queue_declare(status_queue(group), passive=True)
        except px.ChannelClosedByBroker:
            return StatusRead((), beats)
        bodies: list[bytes] = []
        last_tag = None
        for _ in range(5):
            method, _props, body = channel.basic_get(status_queue(group), auto_ack=False)
            if method is None:
                break
            bodies.append(body)
            last_tag = method.delivery_tag
        if last_tag is not None:
            channel.basic_nack(last_tag, multiple=True, requeue=True)
        return StatusRead(tuple(bodies), beats)
    except (px.AMQPError, *CONNECTION_ERRORS) as exc:
        raise BrokerError(f"reading the beat status failed: {_describe(exc)}") from None
    finally:
        close_quietly(connection)
