"""Declare random topologies in RabbitMQ, publish random keys, and check that the
queues RabbitMQ filled are exactly the ones the model predicted."""
from __future__ import annotations

import random
from collections import defaultdict

import pika
import pytest

from amqtask.amqp.blocking import BlockingTransport
from amqtask.settings import BrokerSettings
from amqtask.brokerurl import parse_broker_urls
from amqtask.topology.model import Binding, Exchange, Queue, Topology

from .conftest import drain

WORDS = ["a", "b", "c", ""]
HEADER_VALUES = {"h1": ["x", "y"], "h2": [1, 2], "x-h": ["z"]}


def random_topology(rng: random.Random, prefix: str) -> Topology:
    exchanges = []
    for i in range(rng.randint(3, 6)):
        kind = rng.choice(["direct", "topic", "fanout", "headers"])
        exchanges.append(Exchange(f"{prefix}.x{i}", kind, durable=False, auto_delete=False))
    names = [x.name for x in exchanges]
    # some exchanges get an alternate exchange (possibly forming loops: RabbitMQ copes, so must we)
    exchanges = [
        Exchange(x.name, x.type, durable=False, alternate_exchange=rng.choice(names) if rng.random() < 0.3 else None)
        for x in exchanges
    ]
    queues = [Queue(f"{prefix}.q{i}", durable=False) for i in range(rng.randint(3, 7))]
    bindings = []
    for _ in range(rng.randint(5, 14)):
        source = rng.choice(exchanges)
        to_exchange = rng.random() < 0.25
        dest = rng.choice(names) if to_exchange else rng.choice(queues).name
        if source.type == "topic":
            key = ".".join(rng.choice(WORDS + ["*", "#"]) for _ in range(rng.randint(0, 3)))
        else:
            key = ".".join(rng.choice(WORDS) for _ in range(rng.randint(0, 2)))
        args = {}
        if source.type == "headers":
            args = {"x-match": rng.choice(["all", "any"])}
            for h in rng.sample(sorted(HEADER_VALUES), rng.randint(0, 2)):
                args[h] = rng.choice(HEADER_VALUES[h])
        bindings.append(Binding(source.name, dest, key, args, to_exchange=to_exchange))
    unique = {(b.source, b.destination, b.routing_key, tuple(sorted(b.arguments.items())), b.to_exchange): b
              for b in bindings}
    return Topology.build(exchanges, queues, unique.values())


@pytest.mark.parametrize("seed", range(12))
def test_model_agrees_with_rabbitmq(seed, broker_url, amqp, prefix):
    rng = random.Random(seed)
    topology = random_topology(rng, prefix)
    for q in topology.queues:
        amqp.track("queue", q)
    for x in topology.exchanges:
        amqp.track("exchange", x)
    with BlockingTransport(BrokerSettings(urls=parse_broker_urls(broker_url))) as transport:
        assert transport.declare(topology) == []

    expected: dict[str, set[int]] = defaultdict(set)
    amqp.confirm_delivery()
    exchange_names = list(topology.exchanges) + [""]
    for n in range(200):
        exchange = rng.choice(exchange_names)
        if exchange == "":
            key = rng.choice(list(topology.queues) + ["nowhere"])
        else:
            key = ".".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3)))
        headers = {h: rng.choice(v) for h, v in HEADER_VALUES.items() if rng.random() < 0.6}
        amqp.basic_publish(exchange, key, str(n).encode(), pika.BasicProperties(headers={**headers, "n": n}))
        for queue in topology.route(exchange, key, headers):
            expected[queue].add(n)

    actual = {q: {int(body) for _, _, body in drain(amqp, q)} for q in topology.queues}
    for queue in topology.queues:
        assert actual[queue] == expected.get(queue, set()), (
            f"queue {queue}: RabbitMQ-only {sorted(actual[queue] - expected.get(queue, set()))}, "
            f"model-only {sorted(expected.get(queue, set()) - actual[queue])}"
        )
    assert sum(len(v) for v in actual.values()) > 0
