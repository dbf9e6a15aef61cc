"""rpc:// against the real broker (bounded queue and memory, a deleted reply queue
declared again, heartbeats kept between reads) and canvas messages compared with
what a real Celery 5 client puts on the wire for the same canvas."""
from __future__ import annotations

import json
import time
import uuid

import pika
import pytest
import redis
from celery import Celery
from celery import chain as celery_chain
from celery import chord as celery_chord
from celery import group as celery_group
from kombu import Queue

from amqtask import App
from amqtask.amqp.replies import ReplyQueue
from amqtask.canvas import chain, chord, group
from amqtask.results import SUCCESS, result_body
from amqtask.settings import BrokerSettings
from amqtask.brokerurl import parse_broker_urls

from .conftest import drain, worker_yaml
from .results_services import REDIS_URL, redis_problem, require


def publish_result(channel, queue: str, task_id: str, value) -> None:
    channel.basic_publish("", queue, json.dumps(result_body(task_id, SUCCESS, value)).encode(),
                          pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                               correlation_id=task_id, delivery_mode=2))


def test_the_reply_queue_holds_a_bounded_number_of_results_nobody_reads(broker_url, amqp):
    replies = ReplyQueue(BrokerSettings(urls=parse_broker_urls(broker_url)), expires_ms=60_000, max_pending=3,
                         accept=("json",))
    replies.ensure_queue()
    amqp.track("queue", replies.name)
    replies._closed.set()  # a client that stopped reading: no keep-alive, no consumer
    with replies._lock:
        replies._reset()
    for i in range(10):
        publish_result(amqp, replies.name, f"t{i}", i)
    counts = []
    deadline = time.monotonic() + 10  # deliveries reach the queue a moment after basic.publish returns
    while time.monotonic() < deadline and (not counts or counts[-1] < 3):
        counts.append(amqp.queue_declare(replies.name, passive=True).method.message_count)
        time.sleep(0.1)
    assert counts[-1] == 3 and max(counts) == 3  # never more than max_pending held for a client that does not read
    ids = [replies.expect(f"t{i}") and f"t{i}" for i in range(10)]
    replies.poll(1.0)  # reconnects and takes in what is there: the three newest
    assert [replies.latest(i) and replies.latest(i)["result"] for i in ids[-3:]] == [7, 8, 9]
    assert not any(replies.knows(i) for i in ids[:7])
    replies.close()


def test_a_deleted_reply_queue_is_declared_again_and_results_flow(broker_url, amqp, tmp_path, prefix):
    replies = ReplyQueue(BrokerSettings(urls=parse_broker_urls(broker_url)), expires_ms=60_000, max_pending=100,
                         accept=("json",))
    amqp.track("queue", replies.name)
    replies.expect("before")
    replies.ensure_queue()
    amqp.queue_delete(replies.name)  # an operator, or x-expires after a long pause
    replies.poll(0.5)  # the consumer was cancelled: declared and consumed again on this or the next read
    replies.poll(0.5)
    replies.expect("after")
    publish_result(amqp, replies.name, "after", "ok")
    deadline = time.monotonic() + 10
    while replies.latest("after") is None and time.monotonic() < deadline:
        replies.poll(0.2)
    assert replies.latest("after")["result"] == "ok"
    replies.close()


def test_an_idle_client_keeps_its_connection_between_reads(broker_url, amqp):
    broker = BrokerSettings(urls=parse_broker_urls(broker_url), heartbeat=2)
    replies = ReplyQueue(broker, expires_ms=60_000, max_pending=100, accept=("json",))
    amqp.track("queue", replies.name)
    replies.expect("late")
    replies.ensure_queue()
    connection = replies._connection
    time.sleep(7)  # more than two heartbeat intervals without a read: the broker would close a silent client
    assert replies._connection is connection and connection.is_open
    publish_result(amqp, replies.name, "late", 1)
    deadline = time.monotonic() + 10
    while replies.latest("late") is None and time.monotonic() < deadline:
        replies.poll(0.2)
    assert replies.latest("late")["result"] == 1 and replies._connection is connection
    replies.close()


# -- canvas on the wire, next to Celery's ----------------------------------------------
def capture(amqp, queue: str, expected: int) -> list[dict]:
    """The next `expected` messages of `queue` (Celery publishes without confirms: wait for them)."""
    raw: list = []
    deadline = time.monotonic() + 10
    while len(raw) < expected and time.monotonic() < deadline:
        raw += drain(amqp, queue)
        time.sleep(0.05)
    out = []
    for method, props, body in raw:
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in (props.headers or {}).items()}
        out.append({"routing_key": method.routing_key, "headers": headers, "body": json.loads(body),
                    "reply_to": props.reply_to, "correlation_id": props.correlation_id})
    return out


def shape(message: dict) -> dict:
    """What must agree between Celery's message and ours: ids replaced by their role."""
    ids: dict[str, str] = {}

    def norm(value):
        if isinstance(value, str):
            try:
                uuid.UUID(value)
            except ValueError:
                return value
            return ids.setdefault(value, f"id{len(ids)}")
        if isinstance(value, list):
            return [norm(v) for v in value]
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items() if k != "reply_to"}
        return value

    headers = {k: message["headers"].get(k) for k in ("task", "id", "group", "group_index", "root_id", "parent_id",
                                                       "retries", "eta", "expires")}
    return norm({"headers": headers, "body": message["body"]})


@pytest.fixture
def wire_setup(prefix, broker_url, amqp, tmp_path):
    config = tmp_path / "routing.yaml"
    config.write_text(worker_yaml(prefix).replace("results: {backend: 'rpc://'}", f"results: {{backend: '{REDIS_URL}'}}"))
    app = App("wire", config=config)
    queue = f"{prefix}.work"
    for name in ("work", "other"):
        amqp.track("queue", f"{prefix}.{name}")
    amqp.track("exchange", f"{prefix}.x")
    app.publisher.transport.declare(app.settings.topology)
    celery = Celery("wire", broker=broker_url, backend=REDIS_URL)
    celery.conf.update(task_queues=[Queue(queue, no_declare=True)], task_default_queue=queue)
    yield app, celery, queue
    celery.close()
    app.close()


def test_canvas_messages_match_celerys(wire_setup, amqp):
    require("Redis", redis_problem())
    app, celery, queue = wire_setup
    a, b = app.signature("t.add").set(queue=queue), celery.signature("t.add", queue=queue)
    cases = [
        (1, lambda: chain(a.clone((1, 2)), a.clone((3,)), a.clone((4,)).set(countdown=0)).apply_async(),
         lambda: celery_chain(b.clone((1, 2)), b.clone((3,)), b.clone((4,), countdown=0)).apply_async()),
        (2, lambda: group([a.clone((1, 2)), a.clone((3, 4))]).apply_async(),
         lambda: celery_group([b.clone((1, 2)), b.clone((3, 4))]).apply_async()),
        (2, lambda: chord([a.clone((1, 2)), a.clone((3, 4))])(app.signature("t.sum").set(queue=queue)),
         lambda: celery_chord([b.clone((1, 2)), b.clone((3, 4))])(celery.signature("t.sum", queue=queue))),
        (1, lambda: a.clone((1, 2)).apply_async(link=app.signature("t.log"), link_error=app.signature("t.err")),
         lambda: b.clone((1, 2)).apply_async(link=celery.signature("t.log"), link_error=celery.signature("t.err"))),
    ]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for expected, ours, theirs in cases:
            ours_result = ours()
            mine = capture(amqp, queue, expected)
            theirs_result = theirs()
            celerys = capture(amqp, queue, expected)
            for message in mine:
                # amqtask also puts the chord's size in the body it embeds (Celery's key-value
                # backends read request.chord["chord_size"]); Celery 5.7's client keeps it in Redis only.
                embedded = message["body"][2].get("chord")
                if embedded:
                    assert embedded.pop("chord_size") == 2
            assert len(mine) == expected and [shape(m) for m in mine] == [shape(m) for m in celerys]
            for result in (ours_result, theirs_result):
                parent = getattr(result, "parent", None)
                if parent is not None and hasattr(parent, "results"):  # a chord: its header group
                    gid = parent.id
                    assert client.get(f"celery-taskset-meta-{gid}.s") == b"2"  # the chord size, where workers look
                    client.delete(*[f"celery-taskset-meta-{gid}{s}" for s in (".s", ".c")])
    finally:
        client.close()
