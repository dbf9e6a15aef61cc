"""Celery 5 both ways: a Celery client against amqtask workers, and amqtask against
a Celery worker, results included (Celery's rpc:// backend)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from celery import Celery, chain

from .conftest import ROOT, unacked


@pytest.fixture
def celery_client(broker_url, harness, amqp):
    client = Celery("client", broker=broker_url, backend="rpc://")
    client.conf.update(task_create_missing_queues=True, broker_connection_retry_on_startup=True)
    amqp.track("exchange", harness.queue)  # Celery declares an exchange named after the queue
    yield client
    client.close()


def test_celery_client_calls_an_amqtask_worker_and_reads_the_result(harness, celery_client):
    harness.start("-P", "prefork", "-c", "2")
    result = celery_client.send_task("t.add", (2, 3), queue=harness.queue)
    assert result.get(timeout=20) == 5
    failed = celery_client.send_task("t.fail", (), queue=harness.queue)
    with pytest.raises(Exception) as exc:
        failed.get(timeout=20)
    assert "boom" in str(exc.value) and failed.state == "FAILURE"


def test_celery_countdown_is_parked_by_the_broker_and_runs_on_time(harness, celery_client):
    harness.start("-P", "threads")
    eta = time.time() + 2
    result = celery_client.send_task("t.record", ("celery-eta",), queue=harness.queue, countdown=2)
    time.sleep(0.8)
    assert unacked(harness.queue) == 0  # not held by the worker
    assert result.get(timeout=20) == "celery-eta"
    [start] = harness.records("start")
    assert start["t"] >= eta - 0.05  # Celery computed the eta from its own clock a moment earlier


def test_celery_chain_runs_on_amqtask_workers(harness, celery_client):
    harness.start("-P", "threads", "-c", "2")
    q = harness.queue
    workflow = chain(celery_client.signature("t.add", (2, 3), queue=q), celery_client.signature("t.add", (10,), queue=q))
    assert workflow.apply_async().get(timeout=20) == 15


def test_celery_chord_without_a_result_backend_is_dead_lettered_with_a_reason(harness, amqp):
    harness.start("-P", "threads")
    from .conftest import drain

    body = [[1, 2], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": {"task": "t.add"}}]
    import pika

    amqp.basic_publish("", harness.queue, json.dumps(body).encode(), pika.BasicProperties(
        headers={"task": "t.add", "id": "chord-1"}, content_type="application/json", content_encoding="utf-8"))
    harness.wait_for(lambda: amqp.queue_declare(f"{harness.queue}.dead", passive=True).method.message_count == 1,
                     what="the dead-lettered chord")
    [(_, props, _)] = drain(amqp, f"{harness.queue}.dead")
    assert "chords need a result backend" in props.headers["x-amqtask-reason"]


def test_amqtask_calls_a_celery_worker_and_reads_the_result(harness, tmp_path, broker_url):
    env = {**os.environ, "AMQTASK_BROKER_URL": broker_url, "PEER_RESULT_FILE": str(tmp_path / "peer.json"),
           "PEER_QUEUE": harness.queue, "PYTHONPATH": str(ROOT / "integration" / "celery_peer")}
    # amqtask declares the queue; the Celery worker only consumes it
    harness.app.publisher.transport.declare(harness.app.settings.topology)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "solo", "--without-mingle",
         "--without-gossip", "--without-heartbeat", "-l", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        result = harness.app.send_task("projq.tasks.add", (20, 22), queue=harness.queue)
        assert result.get(timeout=60) == 42
        assert result.state == "SUCCESS"
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
