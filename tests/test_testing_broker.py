"""TestBroker runs the worker's own handler: what a user's test sees is what a worker does."""
from __future__ import annotations

import asyncio
import datetime as dt
import threading

import pytest

from amqtask import App
from amqtask.results import FAILURE, REVOKED, SUCCESS
from amqtask.testing import TestBroker
from amqtask.topology.loader import check_text
from amqtask.worker.request import Reject

CONFIG = """
exchanges:
  tasks: {type: topic}
queues:
  work:
    bindings: [{exchange: tasks, routing_key: "work.#"}]
defaults: {exchange: tasks, routing_key: work.default}
tasks:
  t.rated: {rate_limit: "2/s"}
"""


@pytest.fixture
def app():
    app = App("t", settings=check_text(CONFIG, environ={}).settings)
    app.log = []  # type: ignore[attr-defined]

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    @app.task(name="t.when", bind=True)
    def when(self):
        app.log.append(broker_now.get())
        return self.request.retries

    @app.task(name="t.flaky", bind=True, max_retries=3)
    def flaky(self):
        if self.request.retries < 2:
            raise self.retry(countdown=3600)
        return "third time"

    @app.task(name="t.rated")
    def rated(n):
        app.log.append((n, broker_now.get()))

    @app.task(name="t.refuse")
    def refuse():
        raise Reject("not today")

    @app.task(name="t.boom")
    def boom():
        raise KeyError("k")

    @app.task(name="t.async")
    async def async_task(x):
        await asyncio.sleep(0)
        return x * 2

    return app


class _Now:
    broker: TestBroker | None = None

    def get(self) -> dt.datetime:
        assert self.broker is not None
        return self.broker.now


broker_now = _Now()


def test_countdown_waits_on_the_virtual_clock(app):
    with TestBroker(app) as broker:
        broker_now.broker = broker
        start = broker.now
        result = app.tasks["t.when"].apply_async(countdown=90)
        assert broker.run_all() == 1
        assert result.get() == 0
        assert app.log[0] - start >= dt.timedelta(seconds=90)


def test_retries_are_parked_and_counted(app):
    with TestBroker(app) as broker:
        start = broker.now
        result = app.tasks["t.flaky"].delay()
        assert broker.run_all() == 3
        assert result.get() == "third time" and result.state == SUCCESS
        assert broker.now - start >= dt.timedelta(hours=2)


def test_expired_tasks_are_revoked_not_run(app):
    with TestBroker(app) as broker:
        result = app.tasks["t.add"].apply_async((1, 2), expires=10, countdown=60)
        assert broker.run_all() == 0
        assert result.state == REVOKED


def test_rate_limits_spread_runs_over_time(app):
    with TestBroker(app) as broker:
        broker_now.broker = broker
        for n in range(4):
            app.tasks["t.rated"].delay(n)
        broker.run_all()
        times = [t for _, t in app.log]
        assert sorted(n for n, _ in app.log) == [0, 1, 2, 3]
        assert times[-1] - times[0] >= dt.timedelta(seconds=1.4)


def test_failures_and_rejects_are_dead_lettered_with_reasons(app):
    with TestBroker(app) as broker:
        failed = app.tasks["t.boom"].delay()
        app.tasks["t.refuse"].delay()
        app.send_task("t.missing", ())
        broker.run_all()
        assert failed.state == FAILURE
        reasons = sorted(reason for _, reason in broker.dead_letters("work"))
        assert reasons == ["KeyError: 'k'", "not today", "unknown task 't.missing'"]


def test_async_tasks_and_async_tests(app):
    async def scenario():
        with TestBroker(app) as broker:
            result = await app.tasks["t.async"].delay_async(21)  # published into the test broker
            assert broker.run_all() == 1  # works from inside a running loop too
            assert await broker.run_all_async() == 0
            return result.get()

    assert asyncio.run(scenario()) == 42


def test_a_task_that_schedules_forever_is_stopped(app):
    @app.task(name="t.forever", bind=True, max_retries=None)
    def forever(self):
        raise self.retry(countdown=1, max_retries=10**9)

    with TestBroker(app) as broker:
        app.tasks["t.forever"].delay()
        with pytest.raises(RuntimeError, match="keeps scheduling"):
            broker.run_all(max_runs=50)


def test_messages_from_other_threads_are_routed(app):
    with TestBroker(app) as broker:
        threads = [threading.Thread(target=app.tasks["t.add"].delay, args=(i, i)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(broker.messages("work")) == 5
        assert broker.run_all() == 5


def _app_with_results(backend: str) -> App:
    text = CONFIG + f"results: {{backend: '{backend}'}}\n"
    app = App("t", settings=check_text(text, environ={}).settings)

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    @app.task(name="t.tsum")
    def tsum(values):
        return sum(values)

    @app.task(name="t.boom")
    def boom(x):
        raise KeyError(x)

    return app


@pytest.mark.parametrize("backend", ["redis://127.0.0.1:1/0", "db+postgresql://nobody@127.0.0.1:1/none"])
def test_groups_and_chords_run_with_the_configured_backend_counting_in_memory(backend):
    """Before: TestBroker ignored the configured backend and failed on any chord.
    (Nothing connects to the backend: results live in memory.)"""
    from amqtask.canvas import chord, group

    app = _app_with_results(backend)
    add, tsum = app.tasks["t.add"], app.tasks["t.tsum"]
    with TestBroker(app) as broker:
        together = group(add.s(1, 1), add.s(2, 2), add.s(3, 3)).apply_async()
        together.save()
        summed = chord([add.s(i, i) for i in range(4)])(tsum.s())
        broker.run_all()
        assert together.get() == [2, 4, 6]
        assert app.GroupResult(together.id).get() == [2, 4, 6]
        assert summed.get() == 12
        assert broker.dead_letters("work") == []


def test_a_failed_chord_part_fails_the_body_with_a_chord_error():
    from amqtask.canvas import chord

    app = _app_with_results("redis://127.0.0.1:1/0")
    add, tsum, boom = app.tasks["t.add"], app.tasks["t.tsum"], app.tasks["t.boom"]
    with TestBroker(app) as broker:
        summed = chord([add.s(1, 1), boom.s("k")])(tsum.s())
        broker.run_all()
        with pytest.raises(Exception) as exc:
            summed.get()
        assert type(exc.value).__name__ == "ChordError" and "KeyError" in str(exc.value)


@pytest.mark.parametrize("backend", ["rpc://", None])
def test_chords_are_refused_as_in_production_when_the_backend_cannot_count_them(backend):
    from amqtask.canvas import chord
    from amqtask.results import ChordsUnsupported

    app = _app_with_results(backend) if backend else App("t", settings=check_text(CONFIG, environ={}).settings)
    add = app.tasks.get("t.add") or app.task(name="t.add")(lambda x, y: x + y)
    with TestBroker(app), pytest.raises(ChordsUnsupported):
        chord([add.s(1, 1)])(add.s(0))


def test_an_expired_chord_header_task_fails_the_body_with_a_chord_error():
    """As Celery's mark_as_revoked counts the part. Before: REVOKED was stored, the part
    never counted, and the chord's body waited forever."""
    from amqtask.canvas import chord
    from amqtask.results import REVOKED

    app = _app_with_results("redis://127.0.0.1:1/0")
    add, tsum = app.tasks["t.add"], app.tasks["t.tsum"]
    with TestBroker(app) as broker:
        past = broker.now - dt.timedelta(seconds=5)
        summed = chord([add.s(1, 1), add.s(2, 2).set(expires=past)])(tsum.s())
        broker.run_all()
        assert [r.state for r in summed.parent.results] == [SUCCESS, REVOKED]
        with pytest.raises(Exception) as exc:
            summed.get()
        assert type(exc.value).__name__ == "ChordError" and "TaskRevokedError" in str(exc.value)
