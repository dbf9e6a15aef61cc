"""redis:// against the real Redis and a real Celery 5: what amqtask stores Celery
reads and the reverse, from other processes; TTL; pub/sub waiting; an outage;
chords counted once, started from either side."""
from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
import redis
from celery import Celery
from celery import chord as celery_chord
from kombu import Queue

from amqtask import App
from amqtask.canvas import chord, group
from amqtask.protocol import decode_task
from amqtask.results import (
    FAILURE,
    SUCCESS,
    AsyncResult,
    BackendUnavailable,
    GroupResult,
    ResultMeta,
    TimeoutError,
    exception_payload,
)
from amqtask.serializers import Codec

from .conftest import WorkerHarness, drain
from .results_services import (
    REDIS_URL,
    config_with_backend,
    read_in_another_process,
    redis_problem,
    require,
    start_celery_worker,
    stop,
)


@pytest.fixture(scope="module")
def redis_url():
    require("Redis", redis_problem())
    return REDIS_URL


@pytest.fixture
def keys(redis_url):
    """Task and group ids used by a test; their keys are deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    ids: list[str] = []
    yield ids
    for i in ids:
        client.delete(f"celery-task-meta-{i}", *[f"celery-taskset-meta-{i}{s}" for s in ("", ".j", ".t", ".s", ".d", ".c")])
    client.close()


def new_id(keys: list[str]) -> str:
    keys.append(str(uuid.uuid4()))
    return keys[-1]


@pytest.fixture
def app(tmp_path, prefix, redis_url, broker_url, amqp):
    config = config_with_backend(tmp_path, prefix, redis_url)
    application = App("redis-results", config=config)
    application.config_path = config  # type: ignore[attr-defined]
    amqp.track("queue", f"{prefix}.work")
    amqp.track("queue", f"{prefix}.other")
    amqp.track("exchange", f"{prefix}.x")
    application.publisher.transport.declare(application.settings.topology)
    yield application
    application.close()


def celery_reader(redis_url: str) -> Celery:
    client = Celery("reader", broker="memory://", backend=redis_url)
    client.conf.result_extended = True
    return client


def store(app: App, meta: ResultMeta) -> None:
    async def run() -> None:
        worker_side = app.backend.worker_store()
        try:
            await worker_side.store(meta)
        finally:
            await worker_side.close()

    asyncio.run(run())


def test_celery_and_another_process_read_what_amqtask_stored(app, redis_url, keys):
    ok, bad = new_id(keys), new_id(keys)
    store(app, ResultMeta(ok, SUCCESS, {"sum": 5}, name="t.add", args=(2, 3), kwargs={}, worker="w@h", retries=0,
                          queue="q"))
    store(app, ResultMeta(bad, FAILURE, exception_payload(ValueError("boom")), traceback="Traceback: boom"))
    celery = celery_reader(redis_url)
    try:
        assert celery.AsyncResult(ok).get(timeout=10) == {"sum": 5}
        assert celery.AsyncResult(ok).name == "t.add" and celery.AsyncResult(ok).args == [2, 3]
        with pytest.raises(ValueError, match="boom"):
            celery.AsyncResult(bad).get(timeout=10)
    finally:
        celery.close()
    seen = read_in_another_process(app.config_path, ok)
    assert seen["value"] == {"sum": 5} and seen["state"] == "SUCCESS" and seen["name"] == "t.add"
    failed = read_in_another_process(app.config_path, bad)
    assert failed["raised"] == "ValueError" and failed["message"] == "boom" and failed["state"] == "FAILURE"


def test_results_expire_by_ttl(app, redis_url, keys):
    task_id = new_id(keys)
    store(app, ResultMeta(task_id, SUCCESS, 1))
    ttl = redis.Redis.from_url(redis_url).ttl(f"celery-task-meta-{task_id}")
    assert 0 < ttl <= 60  # results.expires: 60s in this test's routing.yaml


def test_a_stored_success_is_never_overwritten(app, keys):
    task_id = new_id(keys)
    store(app, ResultMeta(task_id, SUCCESS, "first"))
    store(app, ResultMeta(task_id, FAILURE, exception_payload(RuntimeError("second run"))))
    assert AsyncResult(task_id, app=app).get(timeout=5) == "first"


def test_get_sleeps_on_pubsub_until_the_result_is_stored(app, keys):
    task_id = new_id(keys)
    reads = []
    backend = app.backend
    original = backend.latest
    backend.latest = lambda tid: reads.append(tid) or original(tid)  # type: ignore[method-assign]
    timer = threading.Timer(1.5, store, (app, ResultMeta(task_id, SUCCESS, 42)))
    timer.start()
    try:
        assert AsyncResult(task_id, app=app).get(timeout=30, interval=0.01) == 42
    finally:
        timer.join()
        backend.latest = original  # type: ignore[method-assign]
    # Woken by the notification, not by polling every `interval`: one read before, one after.
    assert len(reads) <= 3


def test_await_result_and_timeout(app, keys):
    task_id = new_id(keys)

    async def scenario() -> tuple:
        result = AsyncResult(task_id, app=app)
        with pytest.raises(TimeoutError):
            await result.get_async(timeout=0.3)
        waiter = asyncio.ensure_future(result)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(store, app, ResultMeta(task_id, SUCCESS, "async"))
        return await asyncio.wait_for(waiter, 30), result.state

    assert asyncio.run(scenario()) == ("async", "SUCCESS")


def test_backend_down_store_raises_backend_unavailable_and_get_says_so(tmp_path, prefix):
    down = App("down", config=config_with_backend(tmp_path, prefix, "redis://127.0.0.1:1/0"))
    with pytest.raises(BackendUnavailable) as exc:
        store(down, ResultMeta("x", SUCCESS, 1))
    assert "redis://127.0.0.1:1/0" in str(exc.value)
    with pytest.raises(BackendUnavailable):
        AsyncResult("x", app=down).get(timeout=5)
    with pytest.raises(BackendUnavailable):
        AsyncResult("x", app=down).state


def test_chord_parts_are_counted_once_and_the_body_claimed_once(app, keys):
    gid = new_id(keys)
    ids = [new_id(keys) for _ in range(3)]

    async def scenario() -> list:
        side = app.backend.worker_store()
        try:
            outcomes = [await side.chord_part_return(gid, ids[0], 0, SUCCESS, 10, 3),
                        await side.chord_part_return(gid, ids[0], 0, SUCCESS, 10, 3),  # redelivered
                        await side.chord_part_return(gid, ids[2], 2, SUCCESS, 30, 3)]
            ready = await side.chord_part_return(gid, ids[1], 1, SUCCESS, 20, 3)
            outcomes.append(ready)
            # the completing part redelivered before the body went out: claimed again
            outcomes.append(await side.chord_part_return(gid, ids[1], 1, SUCCESS, 20, 3))
            # another part redelivered meanwhile: not the claim holder
            outcomes.append(await side.chord_part_return(gid, ids[0], 0, SUCCESS, 10, 3))
            await side.chord_complete(ready)
            outcomes.append(await side.chord_part_return(gid, ids[2], 2, SUCCESS, 30, 3))  # after done
            return outcomes
        finally:
            await side.close()

    first, again, third, ready, reclaimed, other, late = asyncio.run(scenario())
    assert first is again is third is None
    assert ready.values() == [10, 20, 30] and [p.task_id for p in ready.parts] == ids
    assert reclaimed is not None and reclaimed.values() == [10, 20, 30]
    assert other is None and late is None


def test_a_chord_sent_by_celery_completes_through_amqtasks_worker_side(app, redis_url, amqp, prefix, keys):
    queue = f"{prefix}.work"
    client = Celery("client", broker=app.settings.broker.urls[0].redacted().replace("***", "guest"),
                    backend=redis_url)
    client.conf.update(task_queues=[Queue(queue, no_declare=True)], task_default_queue=queue)
    try:
        body_result = celery_chord([client.signature("peer.add", (1, 2)), client.signature("peer.add", (3, 4))])(
            client.signature("peer.sum"))
    finally:
        client.close()
    keys.extend([body_result.id, body_result.parent.id])
    codec, messages = Codec(), [decode_task(_wire(m), Codec()) for m in drain(amqp, queue)]
    assert len(messages) == 2

    async def run_headers() -> object:
        side = app.backend.worker_store()
        ready = None
        try:
            for message in messages:  # what the worker does after running each header task
                value = sum(message.args)
                await side.store(ResultMeta(message.id, SUCCESS, value))
                outcome = await side.chord_part_return(message.group, message.id, message.group_index, SUCCESS,
                                                       value, message.embed["chord"].get("chord_size"))
                ready = outcome or ready
            return ready
        finally:
            await side.close()

    ready = asyncio.run(run_headers())
    assert ready is not None and ready.values() == [3, 7]
    from amqtask.canvas import prepare_signature

    _, wire, body_id = prepare_signature(app.publisher, messages[0].embed["chord"], result=ready.values(),
                                         prepend=True)
    body = decode_task(wire, codec)
    assert body_id == body_result.id and body.task == "peer.sum" and body.args == ([3, 7],)
    keys.extend(m.id for m in messages)


def test_an_amqtask_chord_and_group_run_on_a_celery_worker(app, redis_url, broker_url, prefix, keys):
    queue = f"{prefix}.work"
    worker = start_celery_worker(queue, broker_url, redis_url)
    try:
        add, total = app.signature("peer.add").set(queue=queue), app.signature("peer.sum").set(queue=queue)
        result = chord([add.clone((1, 2)), add.clone((3, 4)), add.clone((5, 6))])(total)
        keys.extend([result.id, result.parent.id, *[r.id for r in result.parent.results]])
        assert result.get(timeout=60) == 21
        assert result.parent.get(timeout=10) == [3, 7, 11]
        crowd = group([add.clone((i, i)) for i in range(5)]).apply_async()
        keys.extend([crowd.id, *[r.id for r in crowd.results]])
        assert crowd.get(timeout=60) == [0, 2, 4, 6, 8] and crowd.completed_count() == 5 and crowd.ready()
        crowd.save()
        reader = celery_reader(redis_url)
        try:
            restored = reader.GroupResult.restore(crowd.id)
            assert [r.id for r in restored.results] == [r.id for r in crowd.results]
            assert restored.get(timeout=10) == [0, 2, 4, 6, 8]
        finally:
            reader.close()
        assert [r.id for r in GroupResult.restore(crowd.id, app=app).results] == [r.id for r in crowd.results]
        failing = app.signature("peer.fail").set(queue=queue).delay()
        keys.append(failing.id)
        seen = read_in_another_process(app.config_path, failing.id)
        assert seen["raised"] == "ValueError" and seen["message"] == "peer failed"
    finally:
        stop(worker)


@pytest.fixture
def worker_harness(prefix, tmp_path, amqp, broker_url, redis_url):
    """amqtask workers storing results in Redis."""
    h = WorkerHarness(prefix, tmp_path, amqp, results=f"results:\n  backend: '{redis_url}'\n  expires: 10m\n")
    yield h
    h.stop_all()


def test_a_task_with_track_started_is_started_for_every_reader_while_it_runs(worker_harness, redis_url, keys,
                                                                            tmp_path):
    h = worker_harness
    h.start("-P", "threads", "-c", "2", "-I", "integration.results_tasks")
    gate = tmp_path / "gate"
    result = h.app.send_task("t.started", (str(gate),))
    keys.append(result.id)
    h.wait_for(lambda: result.state == "STARTED", what="the task to be STARTED")
    assert not result.ready()
    celery = celery_reader(redis_url)
    try:
        assert celery.AsyncResult(result.id).state == "STARTED"  # another client sees it too
    finally:
        celery.close()
    gate.touch()
    assert result.get(timeout=30) == "done" and result.state == "SUCCESS"


def _wire(message: tuple):
    from amqtask.protocol import WireMessage

    _, props, body = message
    return WireMessage(body=body, headers={k: v.decode() if isinstance(v, bytes) else v
                                           for k, v in (props.headers or {}).items()},
                       content_type=props.content_type, content_encoding=props.content_encoding,
                       correlation_id=props.correlation_id, reply_to=props.reply_to)



def test_a_redis_outage_after_the_run_keeps_the_message_until_the_result_is_stored(prefix, tmp_path, amqp):
    """Redis goes down while a task runs: the worker keeps the message unacknowledged
    and retries storing its result; once Redis is back the result is stored, the
    message acked, and the task has run exactly once."""
    import subprocess

    from scripts.services import free_port

    from .conftest import WorkerHarness, unacked

    port = free_port()

    def start_redis() -> subprocess.Popen:
        process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                    "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                return process
            except redis.exceptions.ConnectionError:
                threading.Event().wait(0.1)
        process.kill()
        raise AssertionError("a private redis-server did not answer")

    server = start_redis()
    h = WorkerHarness(prefix, tmp_path, amqp, results=f"results:\n  backend: 'redis://127.0.0.1:{port}/0'\n"
                                                      "  expires: 10m\n")
    try:
        h.start("-P", "threads", "-c", "2", "--processes", "1")
        gate = tmp_path / "gate"
        result = h.app.send_task("t.gated", ("outage", str(gate)))
        h.wait_for(lambda: h.records("start"), what="the task to start")
        server.terminate()
        server.wait(timeout=10)
        gate.touch()
        h.wait_for(lambda: "could not be sent" in h.output(h.processes[0]), what="the worker to retry the store")
        assert unacked(h.queue) == 1  # ran, but not acknowledged while its result is unstored
        server = start_redis()
        assert result.get(timeout=30) == "outage"
        h.wait_for(lambda: unacked(h.queue) == 0, what="the message to be acked")
        assert [r["tag"] for r in h.records("start")] == ["outage"]
    finally:
        h.stop_all()
        server.kill()
        server.wait()
