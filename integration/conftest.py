"""Fixtures for tests against a real RabbitMQ (127.0.0.1:5672, or $AMQTASK_BROKER_URL).

Every test uses its own uniquely named exchanges and queues and deletes them
afterwards: the broker is shared with other test runs."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pika
import pytest

from amqtask.amqp.params import pika_parameters
from amqtask.brokerurl import parse_broker_urls
from amqtask.settings import BrokerSettings

from .proxy import TcpProxy

BROKER_URL = os.environ.get("AMQTASK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parent.parent


def connect(url: str = BROKER_URL) -> pika.BlockingConnection:
    """A raw connection for test inspection, named so tests that close amqtask's
    own connections on the broker side can tell them apart."""
    return pika.BlockingConnection(pika_parameters(BrokerSettings(urls=parse_broker_urls(url)), "test-inspector"))


def _broker_answers() -> str | None:
    try:
        connect().close()
        return None
    except Exception as exc:  # any failure means "no usable broker"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def broker_url() -> str:
    problem = _broker_answers()
    if problem:
        message = f"RabbitMQ is not reachable at {parse_broker_urls(BROKER_URL)[0].redacted()} ({problem})"
        if os.environ.get("CI"):
            pytest.fail(message + "; in CI the broker is required")
        pytest.skip(message + "; start it with `rabbitmq-server -detached` (in CI this fails instead)")
    return BROKER_URL


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def amqp(broker_url):
    """A raw pika channel for inspecting and cleaning up; deletes what `track` registered."""
    connection = connect(broker_url)
    channel = connection.channel()
    created: dict[str, set[str]] = {"queue": set(), "exchange": set()}
    channel.track = lambda kind, name: created[kind].add(name)  # type: ignore[attr-defined]
    yield channel
    cleanup = (connection if connection.is_open else connect(broker_url)).channel()
    for q in created["queue"]:
        cleanup.queue_delete(q)
    for x in created["exchange"]:
        cleanup.exchange_delete(x)
    cleanup.connection.close()
    if connection.is_open:
        connection.close()


@pytest.fixture
def proxy():
    url = parse_broker_urls(BROKER_URL)[0]
    p = TcpProxy(url.host, url.port).start()
    yield p
    p.stop()


def drain(channel, queue: str) -> list[tuple]:
    """Every message currently in `queue`, as (method, properties, body), acknowledged."""
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


def topology_yaml(prefix: str, url: str = "${AMQTASK_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}") -> str:
    """The README's minimal routing.yaml with every name made unique by `prefix`."""
    return f"""\
broker:
  url: {url}
  publish_timeout: 5
defaults:
  exchange: {prefix}.tasks
  queue: {prefix}.default
  routing_key: task.default
exchanges:
  {prefix}.tasks: {{type: topic, auto_delete: false}}
  {prefix}.broadcast: {{type: fanout}}
queues:
  {prefix}.default:
    bindings:
      - {{exchange: {prefix}.tasks, routing_key: "task.#"}}
  {prefix}.web_tasks:
    bindings:
      - {{exchange: {prefix}.tasks, routing_key: "web.#"}}
    max_priority: 10
  {prefix}.audit:
    bindings:
      - {{exchange: {prefix}.broadcast}}
  {prefix}.small:
    max_length: 1
    overflow: reject-publish
routes:
  - task: projq.tasks.add
    routing_key: web.add
  - task: "projq.web.*"
    routing_key: web.misc
  - task: "projq.notify.*"
    exchange: {prefix}.broadcast
"""


def track_topology(channel, prefix: str) -> None:
    for x in ("tasks", "broadcast"):
        channel.track("exchange", f"{prefix}.{x}")
    for q in ("default", "web_tasks", "audit", "small"):
        channel.track("queue", f"{prefix}.{q}")
