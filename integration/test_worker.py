"""The worker against the real broker, run as users run it: `amqtask worker` processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pika
import pytest

from amqtask.control import ping_workers
from amqtask.results import FAILURE, REVOKED, SUCCESS, TaskRevokedError

from .conftest import ROOT, drain, unacked


@pytest.mark.parametrize("pool", ["prefork", "threads", "asyncio", "solo"])
def test_each_pool_runs_tasks_and_reports_results(harness, pool):
    harness.start("-P", pool, "-c", "2")
    m = harness.module
    assert m.add.delay(2, 3).get(timeout=20) == 5
    assert m.async_task.delay(21).get(timeout=20) == 42
    failed = m.fail.delay()
    with pytest.raises(ValueError) as exc:
        failed.get(timeout=20)
    assert str(exc.value) == "boom" and "Traceback" in exc.value.traceback
    assert failed.state == FAILURE and failed.failed() and not failed.successful()
    ok = m.add.delay(1, 1)
    ok.get(timeout=20)
    assert ok.state == SUCCESS and ok.ready()


def test_banner_hides_password_and_lists_what_it_serves(harness):
    process = harness.start("-P", "solo")
    out = harness.output(process)
    assert "guest:***@" in out and "guest:guest" not in out
    assert harness.queue in out and "t.add" in out and "prefetch:" in out


def test_prefetch_window_bounds_unacked_messages(harness, amqp, tmp_path):
    harness.start("-P", "threads", "-c", "2", "--prefetch-multiplier", "2")
    consumers = subprocess.run(["rabbitmqctl", "-q", "list_consumers", "queue_name", "prefetch_count"],
                               capture_output=True, text=True, timeout=60).stdout
    assert f"{harness.queue}\t4" in consumers
    gate = tmp_path / "gate"
    for i in range(40):
        harness.module.gated.delay(i, str(gate))
    # While the tasks cannot finish, the worker holds exactly its window: 2 running, 2 waiting.
    harness.wait_for(lambda: len(harness.records("start")) == 2 and unacked(harness.queue) == 4,
                     what="a full prefetch window")
    held = [unacked(harness.queue) for _ in range(3)]
    assert held == [4, 4, 4] and len(harness.records("start")) == 2
    gate.touch()
    seen = []
    while len(harness.records("end")) < 40:
        seen.append(unacked(harness.queue))
    assert max(seen) <= 4, seen


def test_fair_dispatch_short_tasks_do_not_wait_behind_a_long_one(harness):
    harness.start("-P", "prefork", "-c", "2")
    harness.module.record_task.delay("long", sleep=5)
    harness.wait_for(lambda: harness.records("start"), what="the long task to start")
    for i in range(20):
        harness.module.record_task.delay(f"short{i}", sleep=0.01)
    harness.wait_for(lambda: len(harness.records("end")) == 21, timeout=30, what="all tasks")
    ends = {r["tag"]: r["t"] for r in harness.records("end")}
    assert all(ends[f"short{i}"] < ends["long"] for i in range(20))


def test_kill9_mid_task_redelivers_to_another_worker(harness):
    first = harness.start("-P", "prefork", "-c", "1")
    harness.module.record_task.delay("victim", sleep=3)
    harness.wait_for(lambda: harness.records("start"), what="the task to start")
    [started] = harness.records("start")
    assert started["redelivered"] is False and started["ppid"] == first.pid
    second = harness.start("-P", "prefork", "-c", "1")
    os.kill(first.pid, signal.SIGKILL)
    os.kill(started["pid"], signal.SIGKILL)  # its child too, as a machine crash would
    harness.wait_for(lambda: harness.records("end"), timeout=30, what="the rerun")
    reruns = harness.records("start")
    assert len(reruns) == 2 and reruns[1]["redelivered"] is True and reruns[1]["ppid"] == second.pid


def test_dead_child_is_replaced_and_its_task_failed_and_dead_lettered(harness, amqp):
    harness.start("-P", "prefork", "-c", "1")
    m = harness.module
    lost = m.die.delay()
    with pytest.raises(Exception) as exc:
        lost.get(timeout=20)
    assert type(exc.value).__name__ == "WorkerLostError"
    assert m.add.delay(1, 2).get(timeout=20) == 3  # a new child serves
    harness.wait_for(lambda: amqp.queue_declare(f"{harness.queue}.dead", passive=True).method.message_count == 1,
                     what="the dead letter")
    [(_, props, _)] = drain(amqp, f"{harness.queue}.dead")
    assert "WorkerLostError" in props.headers["x-amqtask-reason"]


def test_reject_on_worker_lost_requeues(harness):
    harness.start("-P", "prefork", "-c", "1")
    assert harness.module.die_requeue.delay().get(timeout=30) == "second life"
    assert [r["redelivered"] for r in harness.records("start")] == [False, True]


def test_max_tasks_per_child_recycles_children(harness):
    harness.start("-P", "prefork", "-c", "1", "--max-tasks-per-child", "2")
    pids = [harness.module.pid.delay().get(timeout=20) for _ in range(6)]
    assert len(set(pids)) == 3


def test_retry_then_success_and_max_retries_dead_letters(harness, amqp):
    harness.start("-P", "threads", "-c", "2")
    m = harness.module
    assert m.retry_task.delay(2).get(timeout=30) == 2
    exhausted = m.retry_task.delay(5)
    with pytest.raises(KeyError):
        exhausted.get(timeout=30)
    attempts = [r for r in harness.records("attempt") if r["id"] == exhausted.id]
    assert [a["retries"] for a in attempts] == [0, 1, 2]
    harness.wait_for(lambda: amqp.queue_declare(f"{harness.queue}.dead", passive=True).method.message_count == 1,
                     what="the dead letter")
    [(_, props, _)] = drain(amqp, f"{harness.queue}.dead")
    assert props.headers["x-amqtask-reason"].startswith("max retries (2) exceeded: KeyError")
    assert props.headers["id"] == exhausted.id


def test_autoretry_with_backoff(harness):
    harness.start("-P", "threads")
    assert harness.module.autoretry.delay().get(timeout=30) == "ok"
    assert len(harness.records("attempt")) == 3


def test_countdowns_are_held_by_the_broker_not_the_worker(harness):
    """1,000 tasks with countdowns of 1-5 s: unacked never exceeds the window, and
    nothing runs before its eta."""
    harness.start("-P", "threads", "-c", "4", "--prefetch-multiplier", "2")
    window = 8
    for i in range(1000):
        harness.module.record_task.apply_async((i,), countdown=1 + (i % 5))
    samples = []
    while len(harness.records("end")) < 1000:
        samples.append(unacked(harness.queue))
    starts = harness.records("start")
    assert len({r["id"] for r in starts}) == 1000
    assert all(r["t"] >= r["eta"] for r in starts), [r["t"] - r["eta"] for r in starts if r["t"] < r["eta"]][:5]
    assert max(samples) <= window, samples


def test_future_eta_from_another_client_is_parked(harness, amqp):
    harness.start("-P", "solo")
    eta = time.time() + 2
    headers = {"task": "t.record", "id": "foreign-1",
               "eta": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(eta)) + f".{int(eta % 1 * 1e6):06d}+00:00"}
    amqp.basic_publish("", harness.queue, json.dumps([["foreign"], {}, {}]).encode(),
                       pika.BasicProperties(headers=headers, content_type="application/json",
                                            content_encoding="utf-8"))
    time.sleep(0.7)
    assert unacked(harness.queue) == 0  # parked in the broker, not held
    harness.wait_for(lambda: harness.records("end"), timeout=20, what="the foreign task")
    [start] = harness.records("start")
    assert start["t"] >= eta


def test_expired_task_is_revoked_not_run(harness):
    harness.start("-P", "solo")
    result = harness.module.record_task.apply_async(("late",), expires=0.001)
    time.sleep(0.05)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=20)
    assert result.state == REVOKED and harness.records() == []


def test_time_limits(harness):
    harness.start("-P", "prefork", "-c", "1")
    m = harness.module
    assert m.soft.delay().get(timeout=20) == "cleaned up"
    with pytest.raises(Exception) as exc:
        m.hard.delay().get(timeout=20)
    assert type(exc.value).__name__ == "TimeLimitExceeded"
    assert m.add.delay(2, 2).get(timeout=20) == 4  # the killed child was replaced


def test_rate_limit_does_not_block_other_tasks(harness):
    harness.start("-P", "threads", "-c", "4", "--both")
    for n in range(10):
        harness.module.rated.delay(n)
    for n in range(10):
        harness.module.unrated.delay(n)
    harness.wait_for(lambda: len(harness.records("rated")) == 10, timeout=30, what="rated tasks")
    rated = sorted(r["t"] for r in harness.records("rated"))
    unrated = sorted(r["t"] for r in harness.records("unrated"))
    assert len(unrated) == 10 and unrated[-1] < rated[-1]
    assert rated[-1] - rated[0] >= 1.5  # 10 tasks at 5/s span at least 1.8 s


def test_bad_messages_are_dead_lettered_and_the_worker_keeps_serving(harness, amqp):
    harness.start("-P", "threads", "-c", "2")
    bad = [
        (b"\x00\xffnot json", {"task": "t.add", "id": "b1"}, "application/json"),
        (b"[[1, 2], {}", {"task": "t.add", "id": "b2"}, "application/json"),
        (b"[[1, 2], {}, {}]", {"task": "t.add", "id": "b3"}, "text/plain"),
        (b"[[1, 2], {}, {}]", {"id": "b4"}, "application/json"),
        (b"[[1, 2], {}, {}]", {"task": "no.such.task", "id": "b5"}, "application/json"),
        (b"\x80\x04K\x01.", {"task": "t.add", "id": "b6"}, "application/x-python-serialize"),
        (b"[[1, 2], {}, {}]", {"task": "t.add", "id": "b7", "retries": "many"}, "application/json"),
        (b"[[1, 2], {}, {}]", {"task": "t.add", "id": "b8", "compression": "application/x-gzip"},
         "application/json"),
        (b'{"not": "a list"}', {"task": "t.add", "id": "b9"}, "application/json"),
    ]
    good = []
    for round_ in range(30):
        for body, headers, ctype in bad:
            amqp.basic_publish("", harness.queue, body, pika.BasicProperties(
                headers={**headers, "id": f"{headers.get('id')}-{round_}"}, content_type=ctype))
        good.append(harness.module.add.delay(round_, 1))
    assert [r.get(timeout=30) for r in good] == [n + 1 for n in range(30)]
    dead_queue = f"{harness.queue}.dead"
    harness.wait_for(lambda: amqp.queue_declare(dead_queue, passive=True).method.message_count == 270,
                     what="270 dead letters")
    dead = drain(amqp, dead_queue)
    assert all(p.headers.get("x-amqtask-reason") for _, p, _ in dead)
    reasons = " ".join(p.headers["x-amqtask-reason"] for _, p, _ in dead)
    for fragment in ("undecodable", "unknown task 'no.such.task'", "not accepted", "'task' header", "'retries'"):
        assert fragment in reasons
    assert any(r.get("consuming") for r in ping_workers(harness.app.settings.broker, timeout=1))


def test_warm_shutdown_finishes_running_and_returns_the_rest(harness, amqp):
    worker = harness.start("-P", "threads", "-c", "1", "--prefetch-multiplier", "4")
    for i in range(5):
        harness.module.record_task.delay(i, sleep=1)
    harness.wait_for(lambda: harness.records("start"), what="a task to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert len(harness.records("start")) == 1 and len(harness.records("end")) == 1
    assert amqp.queue_declare(harness.queue, passive=True).method.message_count == 4


def test_cold_shutdown_returns_unacked_messages(harness, amqp):
    worker = harness.start("-P", "threads", "-c", "1")
    for i in range(5):
        harness.module.record_task.delay(i, sleep=5)
    harness.wait_for(lambda: harness.records("start"), what="a task to start")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 1
    assert harness.records("end") == []
    harness.wait_for(lambda: amqp.queue_declare(harness.queue, passive=True).method.message_count == 5,
                     what="all five messages back in the queue")


def test_acks_early_when_acks_late_is_off(harness):
    worker = harness.start("-P", "threads", "-c", "1")
    harness.module.early.delay(2)
    harness.wait_for(lambda: harness.records("start"), what="the task to start")
    assert unacked(harness.queue) == 0  # acknowledged on receipt
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)


def test_worker_recovers_from_a_cut_connection(prefix, tmp_path, amqp, proxy):
    from .conftest import WorkerHarness

    h = WorkerHarness(prefix, tmp_path, amqp, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
    try:
        h.start("-P", "threads", "-c", "2")
        for i in range(200):
            h.module.record_task.delay(i, sleep=0.01)
        h.wait_for(lambda: len(h.records("end")) >= 20, what="some progress")
        proxy.cut()
        h.wait_for(lambda: len({r["tag"] for r in h.records("end")}) == 200, timeout=60, what="the drain")
        runs = len(h.records("end"))
        assert runs - 200 <= 2 * 8  # duplicates: at most the in-flight window at the cut
        h.wait_consuming(h.processes[0])
    finally:
        h.stop_all()


def test_worker_recovers_when_the_broker_closes_its_connection(harness):
    worker = harness.start("-P", "threads")
    assert harness.module.add.delay(1, 1).get(timeout=20) == 2
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                         capture_output=True, text=True, timeout=60).stdout
    pids = [line.split()[0] for line in out.splitlines() if f"pid {worker.pid}" in line]
    assert pids
    for pid in pids:
        subprocess.run(["rabbitmqctl", "close_connection", pid, "test"], capture_output=True, timeout=60)
    harness.wait_consuming(worker)
    assert harness.module.add.delay(2, 2).get(timeout=30) == 4


def test_a_channel_the_broker_closes_is_opened_again_on_the_same_connection(harness):
    """RabbitMQ closes a consumer's channel and keeps its connection (consumer_timeout
    on a long late-ack task, a 406 on an unknown delivery tag). Before: the worker
    waited on its connection only, said it was consuming, and never got another message."""
    import asyncio

    from amqtask.worker.worker import Worker, WorkerConfig

    gate = harness.record_file.parent / "gate"

    async def scenario() -> None:
        worker = Worker(harness.app, WorkerConfig(queues=(harness.queue,), pool="threads", concurrency=2,
                                                  hostname=f"{harness.prefix}-chan@localhost"))
        running = asyncio.ensure_future(worker.run(install_signals=False))
        try:
            await _eventually(lambda: worker.consuming, "the worker to consume")
            held = await asyncio.to_thread(harness.module.gated.delay, "held", str(gate))
            await _eventually(lambda: harness.records("start"), "the long task to start")
            connection = worker.consumer._connection
            worker.consumer._channel.basic_ack(99999)  # RabbitMQ answers 406 and closes the channel
            await _eventually(lambda: worker.consumer.reconnects == 1, "a new channel")
            assert worker.consumer._connection is connection and not connection.is_closed
            # The held message went back with its channel: it is delivered again on the new one.
            await _eventually(lambda: any(r["redelivered"] for r in harness.records("start")), "the redelivery")
            gate.touch()
            assert await asyncio.to_thread(held.get, timeout=30) == "held"
            assert await asyncio.to_thread(harness.module.add.delay(2, 3).get, timeout=30) == 5
            # Nothing of the closed channel was settled on the new one (that would close it too).
            assert worker.consumer.reconnects == 1 and worker.consuming
        finally:
            gate.touch()
            worker.request_shutdown()
            assert await asyncio.wait_for(running, 60) == 0

    asyncio.run(scenario())


async def _eventually(predicate, what: str, timeout: float = 30.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_deleted_queue_is_declared_again(harness, amqp):
    worker = harness.start("-P", "threads")
    amqp.queue_delete(harness.queue)
    time.sleep(3)
    harness.wait_consuming(worker)
    harness.wait_for(lambda: _exists(amqp, harness.queue), what="the queue to come back")
    assert harness.module.add.delay(3, 3).get(timeout=30) == 6


def _exists(amqp, queue: str) -> bool:
    channel = amqp.connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
        channel.close()
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False


def test_inspect_ping_is_a_health_check(harness, broker_url):
    config = str(harness.config)
    nobody = subprocess.run([sys.executable, "-m", "amqtask.cli", "inspect", "ping", "-d", "nobody-here",
                             "--config", config], capture_output=True, text=True, env=harness.env, timeout=60)
    assert nobody.returncode == 1 and "no worker answered" in nobody.stderr
    worker = harness.start("-P", "solo")
    ok = subprocess.run([sys.executable, "-m", "amqtask.cli", "inspect", "ping", "-d", worker.name,
                         "--config", config], capture_output=True, text=True, env=harness.env, timeout=60)
    assert ok.returncode == 0 and "pong (consuming" in ok.stdout


def test_call_wait_prints_the_result(harness):
    harness.start("-P", "solo")
    called = subprocess.run([sys.executable, "-m", "amqtask.cli", "call", "t.add", "--args", "[2,3]", "--wait",
                             "--config", str(harness.config)], capture_output=True, text=True, env=harness.env,
                            cwd=ROOT, timeout=60)
    assert called.returncode == 0, called.stderr
    assert "result:      5" in called.stdout


def test_max_memory_per_child_recycles_children(harness):
    harness.start("-P", "prefork", "-c", "1", "--max-memory-per-child", "1")  # 1 KiB: always over
    pids = [harness.module.pid.delay().get(timeout=20) for _ in range(3)]
    assert len(set(pids)) == 3
