"""Publishing against the real broker: confirms, mandatory, faults, threads, asyncio."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading

import pytest

from amqtask import App, BrokerUnavailable, NackError, PublishError, UnroutableError
from amqtask.amqp.blocking import BlockingTransport
from amqtask.topology.loader import check_text

from .conftest import drain, topology_yaml, track_topology


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


def test_failover_to_the_next_url(prefix, amqp, broker_url):
    track_topology(amqp, prefix)
    url = "amqp://guest:guest@127.0.0.1:1//;" + broker_url
    app = make_app(prefix, url=url)
    app.publisher.transport.declare(app.settings.topology)
    app.send_task("projq.tasks.add", (1,))
    app.close()
    assert len(drain(amqp, f"{prefix}.web_tasks")) == 1


def test_publisher_is_shared_safely_between_threads(app, amqp, prefix):
    errors = []

    def publish_many(n: int) -> None:
        try:
            for i in range(50):
                app.send_task("projq.tasks.add", (n, i))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish_many, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    bodies = sorted(tuple(json.loads(b)[0]) for _, _, b in drain(amqp, f"{prefix}.web_tasks"))
    assert bodies == sorted((n, i) for n in range(8) for i in range(50))


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


def test_resource_alarm_gives_an_error_not_a_hang(prefix, amqp):
    track_topology(amqp, prefix)
    app = make_app(prefix, **{"publish_timeout: 5": "publish_timeout: 2"})
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
