"""Publishing against the real broker: confirms, mandatory, faults, threads, asyncio."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading

import pika
import pytest

from amqtask import App, BrokerUnavailable, NackError, PublishError, UnroutableError
from amqtask.amqp.blocking import BlockingTransport
from amqtask.topology.loader import check_text

from .conftest import drain, topology_yaml, track_topology
from .results_services import in_a_child


def make_app(prefix: str, url: str | None = None, **yaml_overrides: str) -> App:
    text = topology_yaml(prefix, url) if url else topology_yaml(prefix)
    for old, new in yaml_overrides.items():
        text = text.replace(old, new)
    result = check_text(text, source=f"{prefix}.yaml")
    assert result.settings is not None, result.problems
    return App("test", settings=result.settings)


@pytest.fixture
def app(prefix, amqp):
    track_topology(amqp, prefix)
    app = make_app(prefix)
    assert app.publisher.transport.declare(app.settings.topology) == []
    yield app
    app.close()


def test_delay_lands_one_celery_v2_message_in_the_routed_queue(app, amqp, prefix):
    result = app.send_task("projq.tasks.add", (2, 3))
    [(method, props, body)] = drain(amqp, f"{prefix}.web_tasks")
    assert (method.exchange, method.routing_key) == (f"{prefix}.tasks", "web.add")
    assert props.correlation_id == result.id and props.delivery_mode == 2
    assert (props.content_type, props.content_encoding) == ("application/json", "utf-8")
    h = props.headers
    assert (h["task"], h["id"], h["root_id"], h["lang"], h["retries"]) == (
        "projq.tasks.add", result.id, result.id, "py", 0)
    assert h["timelimit"] == [None, None] and h["eta"] is None and h["argsrepr"] == "(2, 3)"
    assert json.loads(body) == [[2, 3], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    assert drain(amqp, f"{prefix}.default") == [] and drain(amqp, f"{prefix}.audit") == []


def test_routes_by_glob_fanout_and_default(app, amqp, prefix):
    app.send_task("projq.web.page", ())
    app.send_task("projq.notify.email", ())
    app.send_task("something.else", (), priority=3)
    assert [p.headers["task"] for _, p, _ in drain(amqp, f"{prefix}.web_tasks")] == ["projq.web.page"]
    assert [p.headers["task"] for _, p, _ in drain(amqp, f"{prefix}.audit")] == ["projq.notify.email"]
    [(_, props, _)] = drain(amqp, f"{prefix}.default")
    assert props.headers["task"] == "something.else" and props.priority == 3


def test_unroutable_publish_raises_naming_exchange_and_key(app, amqp, prefix):
    with pytest.raises(UnroutableError) as exc:
        app.send_task("projq.tasks.add", (1, 1), routing_key="zz.nowhere")
    assert exc.value.exchange == f"{prefix}.tasks" and exc.value.routing_key == "zz.nowhere"
    assert "unroutable" in str(exc.value)
    # the publisher keeps working after a returned message
    app.send_task("projq.tasks.add", (1, 1))
    assert len(drain(amqp, f"{prefix}.web_tasks")) == 1


def test_nack_from_a_full_queue_raises(app, amqp, prefix):
    app.send_task("x", (), queue=f"{prefix}.small")
    with pytest.raises(NackError):
        app.send_task("x", (), queue=f"{prefix}.small")
    assert len(drain(amqp, f"{prefix}.small")) == 1


def test_a_nacked_publish_is_sent_again_on_a_new_channel(app, amqp, prefix, monkeypatch):
    """RabbitMQ 3.10 nacks every publish of a channel caught in a quorum queue's leader
    change for as long as the channel lives: one nack, then the same channel again,
    would fail every later publish. The nacked message goes again on a new channel."""
    from pika.adapters.blocking_connection import BlockingChannel

    real = BlockingChannel.basic_publish
    channels = []

    def nack_on_the_first_channel(channel, *args, **kwargs):
        channels.append(channel)
        if channel is channels[0]:
            raise pika.exceptions.NackError([])
        return real(channel, *args, **kwargs)

    monkeypatch.setattr(BlockingChannel, "basic_publish", nack_on_the_first_channel)
    result = app.send_task("projq.tasks.add", (4, 5))
    assert len(channels) == 2 and channels[0] is not channels[1]
    [(_, props, _)] = drain(amqp, f"{prefix}.web_tasks")
    assert props.correlation_id == result.id


def test_a_nack_on_every_channel_still_raises_after_the_retries(app, prefix, monkeypatch):
    from pika.adapters.blocking_connection import BlockingChannel

    channels = []  # kept alive, so no two share an id

    def always_nack(channel, *args, **kwargs):
        channels.append(channel)
        raise pika.exceptions.NackError([])

    monkeypatch.setattr(BlockingChannel, "basic_publish", always_nack)
    with pytest.raises(NackError):
        app.send_task("projq.tasks.add", (4, 5))
    assert len({id(c) for c in channels}) == len(channels) == app.settings.broker.publish_retries + 1


def test_connection_dropped_between_publishes_is_invisible(prefix, amqp, proxy):
    track_topology(amqp, prefix)
    app = make_app(prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
    app.publisher.transport.declare(app.settings.topology)
    app.send_task("projq.tasks.add", (1,))
    proxy.cut()
    app.send_task("projq.tasks.add", (2,))  # reconnects underneath
    proxy.cut()
    app.send_task("projq.tasks.add", (3,))
    app.close()
    bodies = [json.loads(b)[0] for _, _, b in drain(amqp, f"{prefix}.web_tasks")]
    assert bodies == [[1], [2], [3]]


def test_broker_down_is_a_clear_bounded_error(prefix, proxy):
    app = make_app(prefix, url=f"amqp://guest:secretpw@127.0.0.1:{proxy.port}//")
    proxy.refuse(True)
    with pytest.raises(BrokerUnavailable) as exc:
        app.send_task("projq.tasks.add", (1,))
    assert "cannot connect to the broker" in str(exc.value) and "secretpw" not in str(exc.value)


@pytest.mark.timeout(90)  # unbounded, the confirm was awaited until heartbeats were missed: minutes
def test_a_silent_broker_fails_a_publish_at_publish_timeout(prefix, amqp, proxy):
    track_topology(amqp, prefix)
    app = make_app(prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
                   **{"publish_timeout: 5": "publish_timeout: 1\n  heartbeat: 60"})
    app.publisher.transport.declare(app.settings.topology)
    app.send_task("projq.tasks.add", (1,), ignore_result=True)  # the connection is open
    proxy.silence(True)  # a partition: nothing gets through, nobody hangs up
    with pytest.raises(PublishError, match=r"publish not confirmed within 1s \(broker.publish_timeout\)"):
        app.send_task("projq.tasks.add", (2,), ignore_result=True)
    proxy.silence(False)
    app.send_task("projq.tasks.add", (3,), ignore_result=True)  # on a new connection
    app.close()
    assert [json.loads(b)[0] for _, _, b in drain(amqp, f"{prefix}.web_tasks")] == [[1], [3]]


def test_failover_to_the_next_url(prefix, amqp, broker_url):
    track_topology(amqp, prefix)
    url = "amqp://guest:guest@127.0.0.1:1//;" + broker_url
    app = make_app(prefix, url=url)
    app.publisher.transport.declare(app.settings.topology)
    app.send_task("projq.tasks.add", (1,))
    app.close()
    assert len(drain(amqp, f"{prefix}.web_tasks")) == 1


def test_publisher_is_shared_safely_between_threads(app, amqp, prefix):
    """Threads that send their first tasks at once, on an App that has not sent yet,
    share one publisher and one reply queue, and every result can reach the App."""
    fresh = make_app(prefix)
    errors, publishers, sent = [], set(), []
    start = threading.Barrier(8)

    def publish_many(n: int) -> None:
        try:
            start.wait()
            for i in range(50):
                sent.append(fresh.send_task("projq.tasks.add", (n, i)))
                publishers.add(id(fresh.publisher))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish_many, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reply_queue = fresh.backend.queue.name
    got = drain(amqp, f"{prefix}.web_tasks")
    try:
        assert errors == []
        assert sorted(tuple(json.loads(b)[0]) for _, _, b in got) == sorted((n, i) for n in range(8) for i in range(50))
        assert len(publishers) == 1
        assert {p.reply_to for _, p, _ in got} == {reply_queue}
        assert all(fresh.backend.knows(r.id) for r in sent)
    finally:
        for queue in {p.reply_to for _, p, _ in got} - {reply_queue}:
            amqp.queue_delete(queue)
        fresh.close()


def test_async_publish_and_unroutable(app, amqp, prefix):
    @app.task(name="projq.tasks.add")
    def add(x, y):
        return x + y

    async def scenario():
        sent = [await add.delay_async(i, i) for i in range(5)]
        with pytest.raises(UnroutableError):
            await add.apply_async_async((1, 1), routing_key="zz.nowhere")
        other = await app.send_task_async("projq.notify.x", ())
        await app.aclose()
        return sent, other

    sent, other = asyncio.run(scenario())
    got = drain(amqp, f"{prefix}.web_tasks")
    assert [p.correlation_id for _, p, _ in got] == [r.id for r in sent]
    assert [p.correlation_id for _, p, _ in drain(amqp, f"{prefix}.audit")] == [other.id]


def test_async_publish_survives_a_cut_connection(app, amqp, prefix, proxy):
    app2 = make_app(prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//")

    async def scenario():
        await app2.send_task_async("projq.tasks.add", (1,))
        proxy.cut()
        await asyncio.sleep(0.2)
        await app2.send_task_async("projq.tasks.add", (2,))
        await app2.aclose()

    asyncio.run(scenario())
    assert [json.loads(b)[0] for _, _, b in drain(amqp, f"{prefix}.web_tasks")] == [[1], [2]]


def test_declare_is_idempotent_and_reports_conflicts(app, amqp, prefix):
    transport = app.publisher.transport
    assert transport.declare(app.settings.topology) == []
    # someone else created web_tasks' twin with other arguments
    amqp.queue_declare(f"{prefix}.clash", durable=True, arguments={"x-max-priority": 5})
    amqp.track("queue", f"{prefix}.clash")
    text = topology_yaml(prefix) + f"  - task: clash\n    queue: {prefix}.clash\n"
    text = text.replace("queues:\n", f"queues:\n  {prefix}.clash: {{max_priority: 9}}\n", 1)
    settings = check_text(text).settings
    conflicts = BlockingTransport(settings.broker).declare(settings.topology)
    assert [(c.kind, c.name) for c in conflicts] == [("queue", f"{prefix}.clash")]
    assert "x-max-priority" in conflicts[0].detail and "406" in conflicts[0].detail


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def test_resource_alarm_gives_an_error_not_a_hang(prefix, private_broker):
    """(The alarm is raised on a node of the tests' own, never on the shared broker.)"""
    _rabbitmqctl = private_broker.ctl
    app = make_app(prefix, url=private_broker.url, **{"publish_timeout: 5": "publish_timeout: 2"})
    app.publisher.transport.declare(app.settings.topology)
    app.send_task("projq.tasks.add", (0,))  # connection open before the alarm
    original = _rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    try:
        _rabbitmqctl("set_vm_memory_high_watermark", "0")
        with pytest.raises(PublishError) as exc:
            app.send_task("projq.tasks.add", (1,))
        assert "blocked" in str(exc.value) or "not confirmed" in str(exc.value)
    finally:
        _rabbitmqctl("set_vm_memory_high_watermark", original if original[0].isdigit() else "0.4")
        app.close()


def test_close_connection_from_the_broker_side(prefix, amqp):
    track_topology(amqp, prefix)
    app = make_app(prefix)
    transport = app.publisher.transport
    transport.declare(app.settings.topology)
    app.send_task("projq.tasks.add", (1,))
    closed = 0
    for line in _rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        if f'{{"connection_name","amqtask publisher pid {os.getpid()}"}}' in line and line.startswith("<"):
            pid = line.split()[0]
            subprocess.run(["rabbitmqctl", "close_connection", pid, "test"], capture_output=True, timeout=60)
            closed += 1
    assert closed >= 1
    app.send_task("projq.tasks.add", (2,))
    app.close()
    assert len(drain(amqp, f"{prefix}.web_tasks")) == 2


def test_a_forked_child_publishes_on_a_connection_of_its_own(app, amqp, prefix):
    """gunicorn --preload: the parent published before the fork; the child must not
    write on the parent's socket, and the parent must keep working."""
    app.send_task("projq.tasks.add", ("parent-before",))

    def child() -> None:
        try:
            app.send_task("projq.tasks.add", ("child",))
        finally:
            app.close()  # the child's own reply queue goes with it

    assert in_a_child(child) == 0
    app.send_task("projq.tasks.add", ("parent-after",))
    app.close()
    got = sorted(json.loads(b)[0][0] for _, _, b in drain(amqp, f"{prefix}.web_tasks"))
    assert got == ["child", "parent-after", "parent-before"]


def answer_tasks(channel, queue: str) -> list:
    """Do a worker's part: reply to each task in `queue` with its first argument,
    in Celery's rpc format, on `channel`. Returns the arguments answered."""
    from amqtask.results import SUCCESS, result_body

    answered = []
    for _, props, body in drain(channel, queue):
        answered.append(json.loads(body)[0][0])
        document = json.dumps(result_body(props.correlation_id, SUCCESS, answered[-1]))
        channel.basic_publish("", props.reply_to, document, pika.BasicProperties(
            correlation_id=props.correlation_id, content_type="application/json", content_encoding="utf-8"))
    return answered


def test_a_forked_child_reads_its_results_on_a_reply_queue_of_its_own(app, amqp, prefix):
    from .conftest import connect

    before = app.send_task("projq.tasks.add", ("parent",))
    answer_tasks(amqp, f"{prefix}.web_tasks")
    assert before.get(timeout=10) == "parent"  # the parent consumes its reply queue from now on
    parent_queue = app.backend.queue.name

    def child() -> None:
        sent = [app.send_task("projq.tasks.add", (f"child {i}",)) for i in range(4)]
        connection = connect()
        try:
            assert len(answer_tasks(connection.channel(), f"{prefix}.web_tasks")) == 4
        finally:
            connection.close()
        try:
            assert app.backend.queue.name != parent_queue
            assert [r.get(timeout=10) for r in sent] == [f"child {i}" for i in range(4)]
        finally:
            app.close()  # deletes the child's reply queue

    assert in_a_child(child) == 0
    after = app.send_task("projq.tasks.add", ("parent again",))
    answer_tasks(amqp, f"{prefix}.web_tasks")
    assert after.get(timeout=10) == "parent again" and app.backend.queue.name == parent_queue


def test_a_child_forked_while_a_thread_waits_for_a_result_can_send(app, amqp, prefix):
    """The waiting thread holds the reply queue's lock at the fork (nearly all the time
    it waits); the child must not wait for a lock nobody in it will ever release."""
    unanswered = app.send_task("projq.tasks.add", ("answered after the fork",))
    got = []
    waiting = threading.Thread(target=lambda: got.append(unanswered.get(timeout=30)), daemon=True)
    waiting.start()
    app.backend.poll(0)  # the reply queue is consumed before the fork: the waiter polls it

    def child() -> None:
        try:
            app.send_task("projq.tasks.add", ("child",))
        finally:
            app.close()

    assert in_a_child(child) == 0
    assert sorted(answer_tasks(amqp, f"{prefix}.web_tasks")) == ["answered after the fork", "child"]
    waiting.join()
    assert got == ["answered after the fork"]


def test_async_publisher_reuses_its_connection_after_a_channel_error(app, amqp, prefix):
    async def scenario():
        await app.send_task_async("projq.tasks.add", (1,))
        for _ in range(3):
            with pytest.raises(PublishError):  # the broker closes the channel: no such exchange
                await _to_missing_exchange(app)
        await app.send_task_async("projq.tasks.add", (3,))
        names = _rabbitmqctl("list_connections", "client_properties")
        await app.aclose()
        return names.count(f"amqtask async publisher pid {os.getpid()}")

    assert asyncio.run(scenario()) == 1
    assert [json.loads(b)[0] for _, _, b in drain(amqp, f"{prefix}.web_tasks")] == [[1], [3]]


async def _to_missing_exchange(app):
    from amqtask.protocol import TaskMessage, encode_task
    from amqtask.serializers import Codec

    wire = encode_task(TaskMessage(task="projq.tasks.add"), Codec())
    await app.publisher._async_transport.publish("no-such-exchange-here", "k", wire)
