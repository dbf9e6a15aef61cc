"""Ways a worker could loop, hang, lose work or hurt itself, each tried on a real
`amqtask worker` process against the real broker."""
from __future__ import annotations

import os
import signal
import time
import zlib

import pika
import pytest

from amqtask.protocol import TaskMessage, encode_task
from amqtask.results import FAILURE
from amqtask.serializers import Codec

from .conftest import drain
from .test_chaos import private_harness  # noqa: F401 - a fixture: a worker harness on the tests' own broker


def _publish(amqp, queue: str, message: TaskMessage, **overrides) -> None:
    wire = encode_task(message, Codec())
    headers = {**wire.headers, **overrides.pop("headers", {})}
    amqp.basic_publish("", queue, overrides.pop("body", wire.body), pika.BasicProperties(
        headers=headers, content_type=wire.content_type, content_encoding=wire.content_encoding,
        correlation_id=wire.correlation_id, reply_to=overrides.pop("reply_to", None), delivery_mode=2))


def _dead(amqp, queue: str) -> int:
    return amqp.queue_declare(f"{queue}.dead", passive=True).method.message_count


def test_a_malformed_callback_runs_the_task_once_and_keeps_a_dead_letter(harness, amqp):
    harness.start("-P", "prefork", "-c", "1")
    message = TaskMessage(task="t.record", args=("once",), embed={
        "callbacks": ["not a signature"], "errbacks": None, "chain": None, "chord": None})
    _publish(amqp, harness.queue, message)
    harness.wait_for(lambda: _dead(amqp, harness.queue) == 1, what="the dead-lettered copy")
    time.sleep(1.5)  # a requeue loop would have run it many times by now
    assert len(harness.records("start")) == 1
    [(_, props, _)] = drain(amqp, f"{harness.queue}.dead")
    assert props.headers["x-amqtask-reason"].startswith("canvas: next task not sent")
    assert amqp.queue_declare(harness.queue, passive=True).method.message_count == 0


def test_a_deleted_dead_letter_queue_is_declared_again_and_the_failed_task_runs_once(harness, amqp):
    """Before: with `<queue>.dead` deleted by an operator, the failed task's message
    went back to its queue, ran again, and was then dropped without a trace."""
    harness.start("-P", "threads", "-c", "1")
    amqp.queue_delete(f"{harness.queue}.dead")
    failed = harness.module.fail_on.delay(13)
    with pytest.raises(ValueError):
        failed.get(timeout=20)
    harness.wait_for(lambda: _dead_if_declared(amqp, harness.queue) == 1, what="the dead letter")
    assert harness.module.add.delay(2, 2).get(timeout=20) == 4  # what was queued behind it has run
    assert len(harness.records("part")) == 1
    [(_, props, _)] = drain(amqp, f"{harness.queue}.dead")
    assert props.headers["x-amqtask-reason"] == "ValueError: bad input 13"


def _dead_if_declared(amqp, queue: str) -> int | None:
    """Messages in `<queue>.dead`, None while it does not exist (asked on a channel of
    its own: the broker closes the channel that asks after a missing queue)."""
    channel = amqp.connection.channel()
    try:
        return channel.queue_declare(f"{queue}.dead", passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if channel.is_open:
            channel.close()


def test_hostile_time_limits_are_dead_lettered_without_killing_children(harness, amqp):
    harness.start("-P", "prefork", "-c", "2")
    children = {harness.module.pid.delay().get(timeout=20) for _ in range(6)}
    for limits in ([None, -1], [-5, None]):
        for i in range(10):
            _publish(amqp, harness.queue, TaskMessage(task="t.add", args=(i, 1)), headers={"timelimit": limits})
    harness.wait_for(lambda: _dead(amqp, harness.queue) == 20, what="20 dead letters")
    reasons = {p.headers["x-amqtask-reason"] for _, p, _ in drain(amqp, f"{harness.queue}.dead")}
    assert all("timelimit" in r for r in reasons)
    after = {harness.module.pid.delay().get(timeout=20) for _ in range(6)}
    assert after <= children  # the same children serve: none was killed


def test_a_decompression_bomb_is_dead_lettered_and_the_worker_keeps_serving(harness, amqp):
    harness.start("-P", "threads", "-c", "2")
    bomb = zlib.compress(b"[[" + b"0," * 20_000_000 + b"0],{},{}]", 9)
    _publish(amqp, harness.queue, TaskMessage(task="t.add", args=(1, 1)), body=bomb,
             headers={"compression": "application/x-gzip"})
    harness.wait_for(lambda: _dead(amqp, harness.queue) == 1, what="the dead-lettered bomb")
    [(_, props, _)] = drain(amqp, f"{harness.queue}.dead")
    assert "expands beyond" in props.headers["x-amqtask-reason"]
    assert harness.module.add.delay(2, 2).get(timeout=20) == 4


def test_unknown_task_reports_failure_instead_of_leaving_get_waiting(harness):
    harness.start("-P", "threads")
    result = harness.app.send_task("t.no_such_task", (1,))
    with pytest.raises(Exception) as exc:
        result.get(timeout=20)
    assert type(exc.value).__name__ == "NotRegistered"
    assert result.state == FAILURE


def test_cold_shutdown_of_prefork_returns_running_tasks_to_their_queue(harness, amqp):
    worker = harness.start("-P", "prefork", "-c", "2")
    results = [harness.module.record_task.delay(i, sleep=30) for i in range(2)]
    harness.wait_for(lambda: len(harness.records("start")) == 2, what="both tasks to start")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 1
    harness.wait_for(lambda: amqp.queue_declare(harness.queue, passive=True).method.message_count == 2,
                     what="both messages back in the queue")
    assert _dead(amqp, harness.queue) == 0
    for result in results:  # no WorkerLostError was reported for them
        assert result.state == "PENDING"


def test_prefork_children_die_with_a_killed_parent(harness):
    worker = harness.start("-P", "prefork", "-c", "1")
    harness.module.record_task.delay("orphan?", sleep=30)
    harness.wait_for(lambda: harness.records("start"), what="the task to start")
    [started] = harness.records("start")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(started["pid"]):
        time.sleep(0.1)
    assert not _alive(started["pid"]), "the child ran on without its parent"


def test_acks_late_false_acks_one_at_a_time_and_a_warm_stop_returns_the_rest(harness, amqp):
    """Before: the whole prefetch window was acked on receipt, and a warm shutdown then
    nacked tags already acked (the broker closed the channel; the messages were lost)."""
    worker = harness.start("-P", "threads", "-c", "1", "--prefetch-multiplier", "4")
    for _ in range(4):
        harness.module.early.delay(1.5)
    harness.wait_for(lambda: harness.records("start"), what="the first task to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert len(harness.records("start")) == 1
    assert amqp.queue_declare(harness.queue, passive=True).method.message_count == 3
    assert "settled twice" not in harness.output(worker) and "PRECONDITION" not in harness.output(worker)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_memory_alarm_holds_back_the_workers_publishing_never_its_acks(private_harness, private_broker):
    """RabbitMQ blocks every connection that publishes while a memory alarm lasts, and a
    blocked connection's acks wait with it. The worker publishes (results, retries,
    chain steps, dead letters) on a connection of its own: a task whose result cannot
    be published waits, unacknowledged, while the tasks beside it are acknowledged.
    (On a node of the tests' own: an alarm on the shared broker would stop every test.)"""
    harness = private_harness
    harness.declare()
    gate_a, gate_b = (harness.record_file.parent / name for name in ("gate-a", "gate-b"))
    waits = harness.module.gated.delay("a", str(gate_a))  # its result is published when it ends
    for i in range(3):  # these publish nothing
        harness.module.gated.apply_async((f"b{i}", str(gate_b)), ignore_result=True)
    harness.start("-P", "threads", "-c", "4")
    harness.wait_for(lambda: len(harness.records("start")) == 4, what="the four tasks to start")
    private_broker.ctl("set_vm_memory_high_watermark", "0")
    try:
        gate_a.touch()
        harness.wait_for(lambda: [r["tag"] for r in harness.records("end")] == ["a"], what="the first task to end")
        gate_b.touch()
        # The three quiet ones are acknowledged; the first waits for its result to be confirmed.
        harness.wait_for(lambda: _ready_and_unacked(private_broker, harness.queue) == (0, 1), timeout=60,
                         what="the acks of the tasks that publish nothing, during the alarm")
    finally:
        private_broker.ctl("set_vm_memory_high_watermark", "0.4")
    assert waits.get(timeout=60) == "a"
    harness.wait_for(lambda: _ready_and_unacked(private_broker, harness.queue) == (0, 0), timeout=60,
                     what="the first task's ack after the alarm")
    started = [r["tag"] for r in harness.records("start")]
    assert sorted(started) == ["a", "b0", "b1", "b2"]  # each ran once: no connection was lost meanwhile


def _ready_and_unacked(broker, queue: str) -> tuple[int, int] | None:
    for line in broker.ctl("list_queues", "-q", "name", "messages_ready", "messages_unacknowledged").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return None
