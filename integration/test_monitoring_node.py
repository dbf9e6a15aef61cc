"""amqtask's own clients (`amqtask inspect`, `amqtask control`, `amqtask events`)
against a node running the monitoring modules, and the failures: a second worker
with the same name, revocations across restarts and with no worker running, a cut
connection, and a broker memory alarm that blocks the events link (on a RabbitMQ
node of the test's own, never the shared one)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pika
import pytest

from .conftest import ROOT, unacked
from .monitoring import (EventLog, NodeRunner, PrivateBroker, event_log, free_port,  # noqa: F401 - fixtures
                         has_rabbitmq_server, monitor_yaml, nodes, wait_until)


def test_amqtask_inspect_and_control(nodes):
    node = nodes.start()
    name = node.node
    ping = nodes.amqtask("inspect", "ping", "-d", name)
    assert ping.returncode == 0 and f"{name}: pong (consuming {nodes.queue}; 0 active)" in ping.stdout
    nobody = nodes.amqtask("inspect", "ping", "-d", nodes.name("-nobody"))
    assert nobody.returncode == 1 and "no worker answered within 1s" in nobody.stderr

    stats = json.loads(nodes.amqtask("inspect", "stats", "-d", name, "--json").stdout)
    assert stats[name]["pid"] == node.pid and stats[name]["consuming"] is True
    table = nodes.amqtask("inspect", "stats", "-d", name).stdout.splitlines()
    assert table[0].split() == ["WORKER", "PID", "UPTIME", "POOL", "CONCURRENCY", "PREFETCH", "TASKS", "CONSUMING"]
    assert table[1].split()[:2] == [name, str(node.pid)] and table[1].split()[-1] == "yes"
    registered = nodes.amqtask("inspect", "registered", "-d", name).stdout
    assert f"{name}  m.sleep [rate_limit=100/m]" in registered and f"{name}  m.block" in registered
    queues = nodes.amqtask("inspect", "active_queues", "-d", name).stdout
    assert nodes.queue in queues and f"{nodes.prefix}.x" in queues

    release = nodes.tmp_path / "release"
    busy = nodes.tasks.block.delay(str(release))
    active = wait_until(lambda: busy.id in (out := nodes.amqtask("inspect", "active", "-d", name).stdout) and out,
                        30, "the task in `inspect active`")
    assert "m.block" in active and "('/tmp/" in active  # the args column is cut to 40 characters
    release.touch()

    limited = nodes.amqtask("control", "rate_limit", "m.add", "10/m", "-d", name)
    assert limited.returncode == 0 and f"{name}: new rate limit set successfully" in limited.stdout
    unknown = nodes.amqtask("control", "rate-limit", "no.such", "10/m", "-d", name)
    assert unknown.returncode == 1 and f"{name}: error: unknown task" in unknown.stdout
    grow = nodes.amqtask("control", "pool_grow", "2", "-d", name)
    assert grow.returncode == 0 and "pool will grow" in grow.stdout
    stats = json.loads(nodes.amqtask("inspect", "stats", "-d", name, "--json").stdout)[name]
    assert stats["pool"]["max-concurrency"] == 3
    assert nodes.amqtask("control", "pool_shrink", "2", "-d", name).returncode == 0
    wait_until(lambda: json.loads(nodes.amqtask("inspect", "stats", "-d", name, "--json").stdout)[name]["pool"][
        "max-concurrency"] == 1, 30, "the pool to shrink back")
    assert nodes.amqtask("control", "time_limit", "m.add", "5", "10", "-d", name).returncode == 0

    # the health check follows what the worker consumes
    assert nodes.amqtask("control", "cancel_consumer", nodes.queue, "-d", name).returncode == 0
    unhealthy = nodes.amqtask("inspect", "ping", "-d", name)
    assert unhealthy.returncode == 1 and "pong (NOT consuming" in unhealthy.stdout
    refused = nodes.amqtask("control", "add_consumer", "not.in.yaml", "-d", name)
    assert refused.returncode == 1 and "is not declared in" in refused.stdout
    assert nodes.amqtask("control", "add_consumer", nodes.queue, "-d", name).returncode == 0
    wait_until(lambda: nodes.amqtask("inspect", "ping", "-d", name).returncode == 0, 30, "consuming again")

    stopped = nodes.amqtask("control", "shutdown", "-d", name, "--json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout) == {name: {"ok": "shutting down"}}
    assert node.wait(30) == 0
    log = nodes.log(node)
    for command in ("rate_limit(task_name='m.add', rate_limit='10/m')", "cancel_consumer(queue=",
                    "shutdown()"):
        assert f"control command {command}" in log and "from reply address reply.celery.pidbox/" in log


def test_events_exactly_as_celery_sends_them(nodes, event_log, amqp):
    raw = amqp.queue_declare("", exclusive=True).method.queue
    amqp.queue_bind(raw, "celeryev", "task.#")
    node = nodes.start("--heartbeat-interval", "0.5")
    name = node.node
    online = event_log.wait("worker-online")
    assert {k: online[k] for k in ("hostname", "pid", "freq", "sw_ident")} == \
        {"hostname": name, "pid": node.pid, "freq": 0.5, "sw_ident": "py-amqtask"}
    wait_until(lambda: len(event_log.of("worker-heartbeat")) >= 2, 30, "two heartbeats")

    quiet = nodes.tasks.add.delay(1, 1)  # task events are off: nothing about it
    heard = wait_until(lambda: [e for e in event_log.of("worker-heartbeat") if e["processed"] == 1], 30,
                       "a heartbeat counting the task")
    assert heard and event_log.of("task-received", quiet.id) == []

    assert nodes.amqtask("control", "enable_events", "-d", name).returncode == 0
    ok = nodes.tasks.add.delay(2, 3)
    succeeded = event_log.wait("task-succeeded", ok.id)
    received = event_log.of("task-received", ok.id)[0]
    assert {k: received[k] for k in ("name", "args", "kwargs", "retries", "eta", "expires", "root_id")} == \
        {"name": "m.add", "args": "(2, 3)", "kwargs": "{}", "retries": 0, "eta": None, "expires": None,
         "root_id": ok.id}
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    clocks = [e["clock"] for e in (received, event_log.of("task-started", ok.id)[0], succeeded)]
    assert clocks == sorted(clocks) and len(set(clocks)) == 3

    method, props, body = wait_until(lambda: next((m for m in _drain(amqp, raw)
                                                   if json.loads(m[2]).get("uuid") == ok.id
                                                   and m[0].routing_key == "task.succeeded"), None),
                                     30, "the raw task.succeeded message")
    assert (props.content_type, props.content_encoding, props.delivery_mode, props.headers) == \
        ("application/json", "utf-8", 1, {"hostname": name})

    assert nodes.amqtask("control", "disable_events", "-d", name).returncode == 0
    after = nodes.tasks.add.delay(4, 4)
    wait_until(lambda: [e for e in event_log.of("worker-heartbeat") if e["processed"] == 3], 30, "the third task")
    assert event_log.of("task-received", after.id) == []

    dump = subprocess.Popen([sys.executable, "-m", "amqtask.cli", "events", "--dump", "--json", "--duration", "4",
                             "--config", str(nodes.config)], stdout=subprocess.PIPE, text=True, env=nodes.env,
                            cwd=ROOT)
    out, _ = dump.communicate(timeout=60)
    mine = [json.loads(line) for line in out.splitlines() if json.loads(line).get("hostname") == name]
    assert dump.returncode == 0 and any(e["type"] == "worker-heartbeat" for e in mine)
    summary = nodes.amqtask("events", "--duration", "3", "--interval", "1")
    assert summary.returncode == 0 and any(line.split()[:2] == [name, "online"]
                                           for line in summary.stdout.splitlines())

    node.send_signal(signal.SIGTERM)
    assert node.wait(30) == 0
    assert event_log.wait("worker-offline")["processed"] == 3


def _drain(channel, queue):
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


def test_a_second_worker_with_the_same_name_is_refused(nodes):
    first = nodes.start()
    second = nodes.start(name=first.node, wait=False)
    assert second.wait(60) == 1
    assert f"a worker named '{first.node}' is already running on this broker" in nodes.log(second)
    assert nodes.amqtask("inspect", "ping", "-d", first.node).returncode == 0  # the first one is untouched


def test_revocations_outlive_workers_and_reach_ones_that_start_later(nodes, event_log):
    early = f"{nodes.prefix}-early"
    nobody = nodes.amqtask("control", "revoke", early, "-d", nodes.name())  # only ours, and it is not running
    assert nobody.returncode == 0 and f"recorded in {nodes.stream}" in nobody.stdout  # no worker running

    node = nodes.start("--events")
    assert early in json.loads(nodes.amqtask("inspect", "revoked", "-d", node.node, "--json").stdout)[node.node]
    late = f"{nodes.prefix}-late"
    celery = nodes.celery("control", "revoke", late, "-d", node.node)  # Celery's CLI: the worker records it
    assert celery.returncode == 0
    nodes.stop(node)

    node = nodes.start("--events")
    revoked = json.loads(nodes.amqtask("inspect", "revoked", "-d", node.node, "--json").stdout)[node.node]
    assert set(revoked) == {early, late}
    for task_id in (early, late):
        nodes.tasks.add.apply_async((1, 2), task_id=task_id)
    normal = nodes.tasks.add.delay(3, 4)
    event_log.wait("task-succeeded", normal.id)
    for task_id in (early, late):
        assert event_log.wait("task-revoked", task_id)["expired"] is False
        assert event_log.of("task-started", task_id) == []


def test_the_node_comes_back_after_its_connection_is_cut(nodes, event_log, proxy, tmp_path):
    config = tmp_path / "proxied.yaml"
    config.write_text(monitor_yaml(nodes.prefix, f"amqp://guest:guest@127.0.0.1:{proxy.port}//"))
    node = nodes.start("--events", "--heartbeat-interval", "0.5", config=config)
    event_log.wait("worker-online")
    proxy.refuse(True)
    proxy.cut()
    wait_until(lambda: "monitor link lost" in nodes.log(node), 30, "the link to notice")
    assert nodes.amqtask("inspect", "ping", "-d", node.node, "--timeout", "0.5").returncode == 1
    proxy.refuse(False)
    wait_until(lambda: nodes.amqtask("inspect", "ping", "-d", node.node, "--timeout", "0.5").returncode == 0, 60,
               "the node to answer again")
    wait_until(lambda: len(event_log.of("worker-online")) == 2, 30, "worker-online after the reconnect")
    after = nodes.tasks.add.delay(5, 5)
    assert event_log.wait("task-succeeded", after.id)["result"] == "10"


@pytest.mark.skipif(not has_rabbitmq_server() and not os.environ.get("CI"), reason="needs rabbitmq-server")
def test_a_memory_alarm_drops_events_and_never_holds_up_the_worker(tmp_path, amqp):
    broker = PrivateBroker(tmp_path)
    try:
        _alarm_scenario(broker, tmp_path)
    finally:
        broker.stop()


def _alarm_scenario(broker: PrivateBroker, tmp_path) -> None:
    import uuid

    prefix = f"t{uuid.uuid4().hex[:10]}"

    class NoTrack:
        def track(self, *args):  # the private broker is deleted whole
            pass

    runner = NodeRunner(prefix, tmp_path, NoTrack(), broker.url)
    port = free_port()
    events = EventLog(runner.broker, {runner.name()})
    try:
        node = runner.start("--events", "--heartbeat-interval", "0.2", "--metrics-port", str(port))
        events.wait("worker-online")
        release = tmp_path / "release"
        slow = runner.tasks.block.delay(str(release))
        events.wait("task-started", slow.id)
        broker.ctl("set_vm_memory_high_watermark", "0")
        try:
            wait_until(lambda: "broker blocked the monitor link" in runner.log(node), 30, "connection.blocked")
            release.touch()
            # while the events link is blocked the task finishes and is acknowledged (the
            # consuming connection publishes nothing, so the broker never blocks it)
            metrics = wait_until(lambda: (m := _scrape(port)) and m.get('amqtask_acks_total') == 1 and m, 30,
                                 "the ack during the alarm")
            assert metrics['amqtask_tasks_total{state="succeeded",task="m.block"}'] == 1
            wait_until(lambda: _scrape(port).get('amqtask_events_dropped_total{reason="broker_blocked"}', 0) >= 2,
                       30, "dropped events to be counted")
        finally:
            broker.ctl("set_vm_memory_high_watermark", "0.4")
        wait_until(lambda: "broker unblocked the monitor link" in runner.log(node), 30, "connection.unblocked")
        before = len(events.of("worker-heartbeat"))
        wait_until(lambda: len(events.of("worker-heartbeat")) > before, 30, "heartbeats after the alarm")
        assert events.of("task-succeeded", slow.id) == []  # dropped, not held and sent late
        stats = json.loads(runner.amqtask("inspect", "stats", "-d", node.node, "--json").stdout)[node.node]
        assert stats["events"]["dropped"]["broker_blocked"] >= 2 and stats["events"]["dropped"]["buffer_full"] == 0
    finally:
        events.close()
        runner.stop_all()


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_garbage_in_the_control_queue_is_ignored(nodes, amqp):
    node = nodes.start()
    queue = f"{node.node}.celery.pidbox"
    for body, ctype in ((b"not json", "application/json"), (b"[1, 2]", "application/json"),
                        (b'{"method": 5}', "application/json"), (b"\x80\x04K\x01.", "application/x-python-serialize"),
                        (b'{"method": "shutdown", "arguments": {}}', "application/x-yaml"),
                        (json.dumps({"method": "ping", "arguments": [], "reply_to": "x"}).encode(), None),
                        (b"{" * 100_000, "application/json"), (b"[" * 100_000, "application/json")):
        amqp.basic_publish("", queue, body, pika.BasicProperties(content_type=ctype, headers={"clock": "x"}))
    ping = nodes.amqtask("inspect", "ping", "-d", node.node)
    assert ping.returncode == 0 and "pong (consuming" in ping.stdout and node.poll() is None
    assert "monitor link" not in nodes.log(node)  # nothing made the link start over


def test_pool_grow_and_shrink_change_the_window_the_broker_applies(nodes, amqp):
    """Before: after pool_grow the consumer kept the window it started with (2 for one
    slot), and stats.prefetch_count said so. RabbitMQ applies a per-consumer window
    to consumers created after basic.qos, so the worker consumes anew: what it held
    stays in hand beside the new consumer's window until it is settled."""
    node = nodes.start()  # threads, one slot, prefetch multiplier 2: a window of 2
    name = node.node
    releases = [nodes.tmp_path / f"release-{n}" for n in range(10)]

    def prefetch_count() -> int:
        return json.loads(nodes.amqtask("inspect", "stats", "-d", name, "--json").stdout)[name]["prefetch_count"]

    def holds(count: int, what: str) -> None:
        wait_until(lambda: unacked(nodes.queue) == count, 30, what)

    def ready() -> int:
        return amqp.queue_declare(nodes.queue, passive=True).method.message_count

    try:
        for release in releases:  # each runs until its own file exists
            nodes.tasks.block.delay(str(release))
        holds(2, "the first window")
        assert prefetch_count() == 2
        grow = nodes.amqtask("control", "pool_grow", "1", "-d", name)
        assert grow.returncode == 0 and "pool will grow" in grow.stdout
        wait_until(lambda: prefetch_count() == 4, 30, "the window for two slots")
        holds(2 + 4, "the new consumer's window beside the two in hand")
        for release in releases[:2]:
            release.touch()
        holds(4, "exactly the new window once the first two are settled")
        assert ready() == 10 - 2 - 4

        shrink = nodes.amqtask("control", "pool_shrink", "1", "-d", name)
        assert shrink.returncode == 0 and "pool will shrink" in shrink.stdout
        wait_until(lambda: prefetch_count() == 2, 30, "the window for one slot")
        for release in releases[2:6]:
            release.touch()
        holds(2, "exactly the smaller window once the four are settled")
        assert ready() == 10 - 6 - 2
    finally:
        for release in releases:  # whatever happened, the worker can stop at once
            release.touch()
    assert nodes.stop(node) == 0

