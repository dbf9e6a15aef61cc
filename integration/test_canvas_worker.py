"""Canvas on amqtask workers with a Redis result backend: groups, chords (also when
a header task is redelivered), errbacks, a backend outage, and Celery clients."""
from __future__ import annotations

import os
import signal
import time

import pytest

from amqtask.canvas import chord, group

from .conftest import WorkerHarness
from .proxy import TcpProxy
from .results_services import REDIS_URL, redis_problem, require


def redis_section(url: str = REDIS_URL) -> str:
    return f"results:\n  backend: '{url}'\n  expires: 10m\n"


@pytest.fixture
def redis_harness(prefix, tmp_path, amqp, broker_url):
    require("Redis", redis_problem())
    h = WorkerHarness(prefix, tmp_path, amqp, results=redis_section())
    yield h
    h.stop_all()


def test_a_group_of_100(redis_harness):
    h = redis_harness
    h.start("-P", "threads", "-c", "4")
    m = h.module
    result = group(m.add.s(i, i) for i in range(100)).apply_async()
    assert result.get(timeout=60) == [2 * i for i in range(100)]
    assert result.completed_count() == 100 and result.successful()


def test_a_chord_of_100_with_one_failing_member_fails_its_body_as_celery_does(redis_harness):
    h = redis_harness
    h.start("-P", "threads", "-c", "4")
    m = h.module
    ok = chord(m.fail_on.s(i, bad=-1) for i in range(100))(m.tsum.s())
    assert ok.get(timeout=60) == sum(range(100))
    failing = chord(m.fail_on.s(i) for i in range(100))(m.tsum.s())
    with pytest.raises(Exception) as exc:
        failing.get(timeout=60)
    assert type(exc.value).__name__ == "ChordError" and "ValueError" in str(exc.value)
    assert len(h.records("body")) == 1  # only the successful chord's body ran


def test_a_redelivered_header_task_is_counted_once(redis_harness):
    h = redis_harness
    first = h.start("-P", "prefork", "-c", "2")
    m = h.module
    result = chord([m.fail_on.s(1, bad=-1), m.fail_on.s(2, bad=-1, sleep=4), m.fail_on.s(3, bad=-1)])(m.tsum.s())
    h.wait_for(lambda: any(r["x"] == 2 for r in h.records("part")), what="the slow header task to start")
    os.kill(first.pid, signal.SIGKILL)  # its children die with it; the slow part is redelivered
    h.start("-P", "prefork", "-c", "2")
    assert result.get(timeout=60) == 6
    assert [r["x"] for r in h.records("part")].count(2) == 2  # ran twice ...
    time.sleep(1)
    assert len(h.records("body")) == 1  # ... counted once: one body


def test_errbacks_run_and_a_failed_chain_fails_its_last_step(redis_harness):
    h = redis_harness
    h.start("-P", "threads", "-c", "2")
    m = h.module
    failed = m.fail_on.apply_async((13,), link_error=m.errback.s())
    with pytest.raises(ValueError):
        failed.get(timeout=30)
    h.wait_for(lambda: h.records("errback"), what="the errback")
    assert h.records("errback")[0]["failed"] == failed.id
    chained = (m.fail_on.s(13) | m.add.s(1) | m.add.s(2)).apply_async()
    with pytest.raises(ValueError):  # the last step fails too: nobody waits forever
        chained.get(timeout=30)


def test_a_redis_outage_holds_acks_until_results_are_stored(prefix, tmp_path, amqp, broker_url):
    require("Redis", redis_problem())
    host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
    proxy = TcpProxy(host, int(port)).start()
    h = WorkerHarness(prefix, tmp_path, amqp, results=redis_section(f"redis://127.0.0.1:{proxy.port}/0"))
    try:
        h.start("-P", "threads", "-c", "2")
        m = h.module
        proxy.refuse(True)
        proxy.cut()
        sent = [m.record_task.delay(i) for i in range(20)]
        h.wait_for(lambda: len(h.records("end")) >= 2, what="tasks to run while Redis is away")
        time.sleep(2)
        assert amqp.queue_declare(h.queue, passive=True).method.message_count >= 20 - 8  # window of 8 held
        proxy.refuse(False)
        assert [r.get(timeout=60) for r in sent] == list(range(20))
        # Every task ran; none ran twice except those redelivered, and each has its result.
        assert {r["tag"] for r in h.records("end")} == set(range(20))
    finally:
        h.stop_all()
        proxy.stop()


def test_a_celery_client_chord_completes_on_amqtask_workers(redis_harness):
    from celery import Celery, chord as celery_chord

    h = redis_harness
    h.start("-P", "threads", "-c", "4")
    client = Celery("client", broker=os.environ.get("AMQTASK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
                    backend=REDIS_URL)
    client.conf.task_default_queue = h.queue
    client.conf.task_default_exchange = f"{h.prefix}.x"
    client.conf.task_default_routing_key = "work"
    header = [client.signature("t.add", (i, i)) for i in range(10)]
    result = celery_chord(header)(client.signature("t.tsum"))
    assert result.get(timeout=60) == sum(2 * i for i in range(10))
