"""Talking to running workers: a ping over the `amqtask.control` fanout exchange,
answered on RabbitMQ's direct reply-to pseudo-queue."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pika
import pika.exceptions as px

from .amqp.params import pika_parameters
from .errors import BrokerUnavailable
from .settings import BrokerSettings

CONTROL_EXCHANGE = "amqtask.control"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def ping_workers(broker: BrokerSettings, *, timeout: float = 1.0, destination: str | None = None) -> list[dict]:
    """Every reply that arrives within `timeout` seconds (none if no worker runs)."""
    try:
        connection = pika.BlockingConnection(pika_parameters(broker, "amqtask control"))
    except (px.AMQPError, OSError) as exc:
        raise BrokerUnavailable(f"cannot connect to the broker: {type(exc).__name__}") from None
    replies: list[dict[str, Any]] = []
    try:
        channel = connection.channel()
        try:
            channel.exchange_declare(CONTROL_EXCHANGE, "fanout", passive=True)
        except px.ChannelClosedByBroker:
            return []  # no worker has ever started on this vhost
        channel = connection.channel()
        correlation = str(uuid.uuid4())

        def on_reply(ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            if props.correlation_id == correlation:
                try:
                    replies.append(json.loads(body))
                except ValueError:
                    pass

        channel.basic_consume(DIRECT_REPLY_TO, on_reply, auto_ack=True)
        command = {"command": "ping", "destination": [destination] if destination else None}
        channel.basic_publish(CONTROL_EXCHANGE, "", json.dumps(command).encode(),
                              pika.BasicProperties(reply_to=DIRECT_REPLY_TO, correlation_id=correlation,
                                                   content_type="application/json"))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            connection.process_data_events(time_limit=min(remaining, 0.1))
    finally:
        if connection.is_open:
            connection.close()
    return replies
