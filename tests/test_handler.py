"""The handler's decisions, without a broker: each delivery is settled exactly once,
nothing is requeued after its task ran, hostile messages are dead-lettered with a
reason, and whoever waits for a result is told."""
from __future__ import annotations

import asyncio
import os
import bz2
import datetime as dt
import json
import threading
import time
import zlib

import pytest

from amqtask import App
from amqtask.delivery import Delivery, Settle
from amqtask.errors import NackError, PublishError, UnroutableError
from amqtask.protocol import TaskMessage, WireMessage, encode_task, utcnow
from amqtask.serializers import Codec
from amqtask.topology.loader import check_text
from amqtask.worker.execute import CANCELLED, WORKER_LOST, Outcome, run_sync
from amqtask.worker.handler import REASON_HEADER, Handler, HandlerConfig
from amqtask.worker.pools import Limits, Pool, ThreadPool, not_started
from amqtask.worker.request import Reject

CONFIG = """
queues:
  work: {}
defaults: {routing_key: work}
"""


class RecordingPort:
    def __init__(self, fail_publishes: int = 0, fail_park: Exception | None = None,
                 fail_dead: Exception | None = None):
        self.published: list[tuple[str, str, WireMessage]] = []
        self.parked: list[tuple[str, WireMessage, float]] = []
        self.dead: list[tuple[str, WireMessage]] = []
        self.fail_publishes = fail_publishes
        self.fail_park = fail_park
        self.fail_dead = fail_dead

    async def publish(self, exchange, routing_key, message, *, mandatory=True):
        if self.fail_publishes:
            self.fail_publishes -= 1
            raise PublishError("broker gone")
        self.published.append((exchange, routing_key, message))

    async def park(self, queue, message, delay):
        if self.fail_park is not None:
            raise self.fail_park
        self.parked.append((queue, message, delay))

    async def dead_letter(self, queue, message, *, routing_key=""):
        if self.fail_dead is not None:
            raise self.fail_dead
        self.dead.append((queue, message))

    def results(self) -> list[dict]:
        return [json.loads(m.body) for _, _, m in self.published if m.correlation_id and not m.headers]

    def reasons(self) -> list[str]:
        return [m.headers[REASON_HEADER] for _, m in self.dead]


class InlinePool(Pool):
    def __init__(self, app, outcome: Outcome | None = None):
        super().__init__(app, 1, Codec(), "json")
        self.runs = []
        self.outcome = outcome

    async def run(self, task, request, limits, start=None):
        reason = await self._acquire(start)  # one slot, as a pool of one thread
        if reason is not None:
            return not_started(reason)
        try:
            await self.running()
            self.runs.append(request)
            return self.outcome or run_sync(task, request, self.codec, self.serializer)
        finally:
            self._free.release()

    async def running(self):
        """The task holds the slot from here (a test may keep it busy)."""


def make_app() -> App:
    app = App("t", settings=check_text(CONFIG, environ={}).settings)
    ran = []

    @app.task(name="t.add")
    def add(x, y):
        ran.append((x, y))
        return x + y

    @app.task(name="t.retry", bind=True, max_retries=5)
    def retry(self, _):
        raise self.retry(countdown=3)

    @app.task(name="t.reject_requeue", acks_late=False)
    def reject_requeue():
        raise Reject("again", requeue=True)

    @app.task(name="t.lost", reject_on_worker_lost=True)
    def lost():
        return None

    @app.task(name="t.fail")
    def fail():
        ran.append("fail")
        raise ValueError("boom")

    @app.task(name="t.fail_early", acks_late=False)
    def fail_early():
        ran.append("fail_early")
        raise ValueError("boom")

    app.ran = ran  # type: ignore[attr-defined]
    return app


def delivery(wire: WireMessage, settles: list, *, redelivered=False, alive=lambda: True) -> Delivery:
    def settle(outcome: Settle) -> bool:
        settles.append(outcome)
        return True

    return Delivery(wire, "work", settle, routing_key="work", redelivered=redelivered, alive=alive)


def task_wire(task="t.add", args=(2, 3), *, reply_to="reply.q", embed=None, headers=None, compression=None,
              serializer="json", **fields) -> WireMessage:
    message = TaskMessage(task=task, args=args, reply_to=reply_to, **fields)
    if embed is not None:
        message = TaskMessage(**{**message.__dict__, "embed": {**message.embed, **embed}})
    wire = encode_task(message, Codec(), serializer=serializer, compression=compression)
    if headers:
        wire = WireMessage(**{**wire.__dict__, "headers": {**wire.headers, **headers}})
    return wire


def handle(app, wire, *, port=None, pool=None, **kw) -> tuple[list, RecordingPort, Handler]:
    port = port or RecordingPort()
    handler = Handler(app, HandlerConfig("w@test"), pool or InlinePool(app), port)
    settles: list = []
    asyncio.run(handler.handle(delivery(wire, settles, **kw)))
    return settles, port, handler


def test_success_reports_the_result_then_acks_once():
    app = make_app()
    settles, port, _ = handle(app, task_wire())
    assert settles == [Settle.ACK]
    assert [r["status"] for r in port.results()] == ["SUCCESS"] and port.results()[0]["result"] == 5
    assert port.dead == []


@pytest.mark.parametrize("embed", [
    {"callbacks": ["not a signature"]},
    {"callbacks": [{"task": "t.add", "args": [1], "options": "not a mapping"}]},
    {"chain": [{"task": 42}]},
    # Found by the chaos suite: a malformed step with more chain behind it raised outside the guard.
    {"chain": [{"task": "t.add"}, {"task": 4059}]},
    {"chain": [{"task": "t.add", "options": {"routing_key": "k" * 300, "exchange": "x"}}]},
])
def test_a_malformed_canvas_after_the_run_dead_letters_a_copy_and_acks(embed):
    """Before: the error after the run requeued the message and the task ran forever."""
    app = make_app()
    if "k" * 300 in json.dumps(embed):
        port = RecordingPort()

        async def refuse_long_keys(exchange, routing_key, message, *, mandatory=True):
            if len(routing_key) > 255:
                raise ValueError("routing key too long")
            port.published.append((exchange, routing_key, message))

        port.publish = refuse_long_keys  # type: ignore[method-assign]
    else:
        port = None
    settles, port, _ = handle(app, task_wire(embed=embed), port=port)
    assert app.ran == [(2, 3)]  # ran once
    assert settles == [Settle.ACK]
    assert len(port.dead) == 1 and port.reasons()[0].startswith("canvas: next task not sent")
    assert port.results()[0]["status"] == "SUCCESS"


def test_an_error_after_the_run_is_never_a_requeue():
    app = make_app()
    settles, port, handler = handle(app, task_wire("t.retry", (1,)), port=RecordingPort(fail_park=RuntimeError("x")))
    assert settles == [Settle.ACK]
    assert port.reasons() == ["internal error: RuntimeError: x"]
    assert handler.stats.internal_errors == 1


def test_a_retry_keeps_the_message_serializer():
    """msgpack arguments with bytes re-encode as msgpack (JSON could not carry them)."""
    app = make_app()
    settles, port, _ = handle(app, task_wire("t.retry", (b"\x00raw",), serializer="msgpack"))
    assert settles == [Settle.ACK]
    [(queue, parked, delay)] = port.parked
    assert queue == "work" and delay == 3 and parked.content_type == "application/x-msgpack"
    assert parked.headers["retries"] == 1


@pytest.mark.parametrize("compress,ctype", [(zlib.compress, "application/x-gzip"),
                                            (bz2.compress, "application/x-bz2")])
def test_decompression_bombs_are_dead_lettered(compress, ctype):
    app = make_app()
    bomb = compress(b"[[" + b"0," * 6_000_000 + b"0],{},{}]")
    assert len(bomb) < 100_000
    wire = WireMessage(bomb, {"task": "t.add", "id": "bomb", "compression": ctype}, "application/json", "utf-8",
                       correlation_id="bomb", reply_to="reply.q")
    settles, port, _ = handle(app, wire)
    assert settles == [Settle.ACK] and app.ran == []
    assert "expands beyond" in port.reasons()[0]
    assert port.results()[0]["status"] == "FAILURE"


def test_deep_nesting_is_dead_lettered():
    app = make_app()
    body = ("[" * 5000 + "]" * 5000).encode()
    settles, port, _ = handle(app, WireMessage(body, {"task": "t.add", "id": "d"}, "application/json", "utf-8"))
    assert settles == [Settle.ACK] and "nested" in port.reasons()[0]


@pytest.mark.parametrize("headers,reason", [
    ({"timelimit": [None, -1]}, "timelimit"),
    ({"timelimit": [float("nan"), None]}, "timelimit"),
    ({"timelimit": [float("inf"), None]}, "timelimit"),
    ({"retries": -1}, "retries"),
    ({"retries": 10**12}, "retries"),
    ({"eta": (utcnow() + dt.timedelta(days=3 * 365)).isoformat()}, "eta"),
    ({"eta": "9999-12-31T23:59:59"}, "eta"),
    ({"id": "x" * 300}, "id"),
])
def test_hostile_headers_are_dead_lettered_with_a_reason(headers, reason):
    app = make_app()
    settles, port, _ = handle(app, task_wire(headers=headers))
    assert settles == [Settle.ACK] and app.ran == []
    assert reason in port.reasons()[0]


def test_yaml_aliases_are_refused():
    app = make_app()
    body = b"- &a [1, 2]\n- *a\n- {}\n"
    settles, port, _ = handle(app, WireMessage(body, {"task": "t.add", "id": "y"}, "application/x-yaml", "utf-8"))
    assert settles == [Settle.ACK] and "alias" in port.reasons()[0]


def test_unknown_task_tells_the_waiting_client_as_celery_does():
    app = make_app()
    settles, port, _ = handle(app, task_wire("t.nope"))
    assert settles == [Settle.ACK]
    [result] = port.results()
    assert result["status"] == "FAILURE" and result["result"]["exc_type"] == "NotRegistered"
    assert port.reasons() == ["unknown task 't.nope'"]


def test_undecodable_body_tells_the_waiting_client():
    app = make_app()
    wire = WireMessage(b"{not json", {"task": "t.add", "id": "u1"}, "application/json", "utf-8", reply_to="r")
    settles, port, _ = handle(app, wire)
    assert settles == [Settle.ACK] and port.results()[0]["status"] == "FAILURE"


def test_acks_late_false_acks_just_before_the_run_and_never_settles_twice():
    app = make_app()
    order = []

    @app.task(name="t.early", acks_late=False)
    def early():
        order.append("ran")

    settles = []
    port = RecordingPort()
    handler = Handler(app, HandlerConfig("w@test"), InlinePool(app), port)

    def settle(outcome):
        order.append(outcome)
        settles.append(outcome)
        return True

    asyncio.run(handler.handle(Delivery(task_wire("t.early", ()), "work", settle)))
    assert order == [Settle.ACK, "ran"] and settles == [Settle.ACK]
    # A task that rejects with requeue after an early ack is not nacked (406 on the channel).
    settles2, _, _ = handle(app, task_wire("t.reject_requeue", ()))
    assert settles2 == [Settle.ACK]


def test_settling_twice_is_refused():
    settles = []
    d = delivery(task_wire(), settles)
    assert d.settle(Settle.ACK) is True
    assert d.settle(Settle.REQUEUE) is False
    assert settles == [Settle.ACK]


def test_a_cold_shutdown_requeues_without_result_or_dead_letter():
    app = make_app()
    settles, port, _ = handle(app, task_wire(), pool=InlinePool(app, Outcome(CANCELLED, reason="cold shutdown")))
    assert settles == [Settle.REQUEUE] and port.published == [] and port.dead == []


def test_a_lost_worker_requeues_once_then_dead_letters():
    app = make_app()
    lost = Outcome(WORKER_LOST, reason="WorkerLostError: child exited with status 3")
    first, port, _ = handle(app, task_wire("t.lost", ()), pool=InlinePool(app, lost))
    assert first == [Settle.REQUEUE] and port.dead == []
    second, port, _ = handle(app, task_wire("t.lost", ()), pool=InlinePool(app, lost), redelivered=True)
    assert second == [Settle.ACK] and "twice" in port.reasons()[0]
    assert port.results()[0]["status"] == "FAILURE"


def test_expired_is_revoked_and_eta_is_parked():
    app = make_app()
    settles, port, _ = handle(app, task_wire(expires=utcnow() - dt.timedelta(seconds=1)))
    assert settles == [Settle.ACK] and port.results()[0]["status"] == "REVOKED" and app.ran == []
    settles, port, _ = handle(app, task_wire(eta=utcnow() + dt.timedelta(seconds=30)))
    assert settles == [Settle.ACK] and app.ran == [] and 29 < port.parked[0][2] <= 30


def test_a_result_that_cannot_be_published_yet_is_retried_before_the_ack():
    app = make_app()
    settles, port, _ = handle(app, task_wire(), port=RecordingPort(fail_publishes=2))
    assert settles == [Settle.ACK] and port.results()[0]["status"] == "SUCCESS"


def test_when_the_channel_dies_meanwhile_nothing_is_acked():
    app = make_app()
    alive = {"yes": True}

    port = RecordingPort(fail_publishes=1000)
    original = port.publish

    async def failing(*args, **kwargs):
        alive["yes"] = False  # the consumer's channel went down with the broker
        return await original(*args, **kwargs)

    port.publish = failing  # type: ignore[method-assign]
    settles, _, _ = handle(app, task_wire(), port=port, alive=lambda: alive["yes"])
    assert settles == []  # left to the broker, which redelivers it


def test_warm_shutdown_requeues_messages_waiting_for_a_slot():
    app = make_app()
    gate = asyncio.Event()

    class Blocking(InlinePool):
        async def running(self):
            await gate.wait()

    async def scenario():
        port = RecordingPort()
        handler = Handler(app, HandlerConfig("w@test"), Blocking(app), port)
        first, second = [], []
        running = asyncio.ensure_future(handler.handle(delivery(task_wire(), first)))
        waiting = asyncio.ensure_future(handler.handle(delivery(task_wire(), second)))
        await asyncio.sleep(0.01)
        handler.stop_taking()
        gate.set()
        await asyncio.gather(running, waiting)
        return first, second

    first, second = asyncio.run(scenario())
    assert first == [Settle.ACK] and second == [Settle.REQUEUE]


def test_thread_pool_hard_limit_counts_from_the_start_and_keeps_the_hung_slot():
    """Before: a task queued behind a hung one was reported failed at the limit and
    then run anyway."""
    app = make_app()
    release = threading.Event()
    ran = []

    @app.task(name="t.hang")
    def hang():
        release.wait(10)

    @app.task(name="t.quick")
    def quick():
        ran.append(time.monotonic())
        return "ok"

    async def scenario():
        pool = ThreadPool(app, 1, Codec(), "json")
        hung = await pool.run(app.tasks["t.hang"], _request("h"), Limits(hard=0.2))
        assert hung.state == "FAILURE" and "TimeLimitExceeded" in hung.reason
        # The thread still runs: the next job waits for it, neither failed nor run.
        queued = asyncio.ensure_future(pool.run(app.tasks["t.quick"], _request("q"), Limits(hard=0.2)))
        await asyncio.sleep(0.3)
        assert not queued.done() and ran == []
        release.set()
        quick_outcome = await queued  # its limit counts from its start, not from its hand-over
        await pool.stop()
        return quick_outcome

    outcome = asyncio.run(scenario())
    assert outcome.state == "SUCCESS" and len(ran) == 1


def _request(task_id: str):
    from amqtask.worker.request import Request

    return Request(id=task_id, task="t")


def test_a_second_copy_of_a_scheduled_run_is_dropped_but_retries_and_redeliveries_run():
    app = make_app()
    port = RecordingPort()
    handler = Handler(app, HandlerConfig("w@test"), InlinePool(app), port)
    scheduled = {"x-amqtask-schedule": "tick", "x-amqtask-scheduled-for": "2026-11-23T00:00:00Z"}
    message = TaskMessage(task="t.add", id="sched-1", args=(1, 1), extra_headers=scheduled)
    first = encode_task(message, Codec())
    retry = encode_task(TaskMessage(**{**message.__dict__, "retries": 1}), Codec())
    outcomes = []

    async def scenario():
        for wire, redelivered in ((first, False), (first, False), (first, True), (retry, False)):
            settles = []
            await handler.handle(delivery(wire, settles, redelivered=redelivered))
            outcomes.append(settles)

    asyncio.run(scenario())
    assert outcomes == [[Settle.ACK]] * 4
    assert app.ran == [(1, 1), (1, 1), (1, 1)]  # the copy was dropped; redelivery and retry ran
    assert handler.stats.duplicates == 1


def test_ignore_acks_and_records_nothing():
    from amqtask.exceptions import Ignore

    app = make_app()

    @app.task(name="t.ignore")
    def ignore():
        raise Ignore()

    settles, port, _ = handle(app, task_wire("t.ignore", ()))
    assert settles == [Settle.ACK] and port.published == [] and port.dead == []


@pytest.mark.parametrize("refusal", [UnroutableError("", "work.dead", "NO_ROUTE"), NackError("refused")])
@pytest.mark.parametrize("task", ["t.fail", "t.fail_early"])
def test_a_task_that_ran_is_never_requeued_when_its_dead_letter_is_refused(task, refusal, caplog):
    """Before: a first delivery went back to its queue and the failing task ran again."""
    app = make_app()
    settles, port, handler = handle(app, task_wire(task, ()), port=RecordingPort(fail_dead=refusal))
    assert app.ran == [task.removeprefix("t.")]
    assert settles == [Settle.ACK]  # acked after the run, or (acks_late off) before it, and only then
    assert handler.stats.dropped == 1 and port.results()[0]["status"] == "FAILURE"
    assert "dropped" in caplog.text and "settled twice" not in caplog.text


def test_a_message_not_run_goes_back_once_when_its_dead_letter_is_refused():
    app = make_app()
    refused = RecordingPort(fail_dead=UnroutableError("", "work.dead", "NO_ROUTE"))
    first, _, _ = handle(app, task_wire("t.nope"), port=refused)
    second, _, handler = handle(app, task_wire("t.nope"), port=refused, redelivered=True)
    assert first == [Settle.REQUEUE] and second == [Settle.REJECT] and handler.stats.dropped == 0


def _base_exception_app() -> App:
    app = make_app()

    @app.task(name="t.cancels")
    async def cancels():
        raise asyncio.CancelledError()

    @app.task(name="t.exits")
    async def exits():
        raise SystemExit(3)

    @app.task(name="t.exits_sync")
    def exits_sync():
        raise SystemExit(3)

    @app.task(name="t.interrupts")
    def interrupts():
        raise KeyboardInterrupt()

    @app.task(name="t.sleeps")
    async def sleeps():
        await asyncio.sleep(30)

    return app


@pytest.mark.parametrize("pool_name,task,raised", [
    ("asyncio", "t.cancels", "CancelledError"),
    ("asyncio", "t.exits", "SystemExit"),
    ("threads", "t.exits", "SystemExit"),
    ("threads", "t.exits_sync", "SystemExit"),
    ("threads", "t.interrupts", "KeyboardInterrupt"),
    ("solo", "t.interrupts", "KeyboardInterrupt"),
])
def test_base_exceptions_raised_by_a_task_fail_it_and_the_worker_goes_on(pool_name, task, raised):
    """Before: an async task's CancelledError left its delivery unsettled, and SystemExit
    (asyncio pool) or KeyboardInterrupt (threads) stopped the worker's event loop."""
    from amqtask.worker.pools import make_pool

    app = _base_exception_app()

    async def scenario():
        pool = make_pool(pool_name, app, 2, Codec(), "json")
        port = RecordingPort()
        handler = Handler(app, HandlerConfig("w@test"), pool, port)
        settles, after = [], []
        await handler.handle(delivery(task_wire(task, ()), settles))
        await handler.handle(delivery(task_wire(), after))  # the worker still serves
        await pool.stop()
        return settles, after, port

    settles, after, port = asyncio.run(scenario())
    assert settles == [Settle.ACK] and after == [Settle.ACK]
    failure, success = port.results()
    assert failure["status"] == "FAILURE" and failure["result"]["exc_type"] == raised
    assert success["result"] == 5
    assert port.reasons()[0].startswith(raised)


def test_cancelling_the_worker_still_cancels_a_running_async_task():
    """A cold shutdown or a lost channel cancels the handler: not a task failure; the
    message is left to the broker, which delivers it again."""
    from amqtask.worker.pools import AsyncioPool

    app = _base_exception_app()

    async def scenario():
        pool = AsyncioPool(app, 2, Codec(), "json")
        port = RecordingPort()
        handler = Handler(app, HandlerConfig("w@test"), pool, port)
        settles = []
        handling = asyncio.ensure_future(handler.handle(delivery(task_wire("t.sleeps", ()), settles)))
        while not handler.active:
            await asyncio.sleep(0.01)
        handling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handling
        await pool.stop()
        return settles, port

    settles, port = asyncio.run(scenario())
    assert settles == [] and port.published == [] and port.dead == []


class _FailingPool(InlinePool):
    async def run(self, task, request, limits, start=None):
        raise RuntimeError("the pool broke")


def test_an_internal_error_tells_the_waiting_client_with_the_reason():
    """Before: it was dead-lettered without a result, and get() without a timeout waited forever."""
    app = make_app()
    settles, port, handler = handle(app, task_wire(), pool=_FailingPool(app))
    assert settles == [Settle.ACK] and handler.stats.internal_errors == 1
    [result] = port.results()
    assert result["status"] == "FAILURE" and result["result"]["exc_type"] == "RuntimeError"
    assert result["result"]["exc_message"] == ["internal error: RuntimeError: the pool broke"]
    assert port.reasons() == ["internal error: RuntimeError: the pool broke"]


def test_an_internal_error_after_the_result_was_stored_does_not_replace_it():
    from amqtask.worker.observe import Observer

    class Broken(Observer):
        def succeeded(self, message, outcome):
            raise RuntimeError("observer broke")

    app = make_app()
    port = RecordingPort()
    handler = Handler(app, HandlerConfig("w@test"), InlinePool(app), port, observe=Broken())
    settles: list = []
    asyncio.run(handler.handle(delivery(task_wire(), settles)))
    assert settles == [Settle.ACK] and [r["status"] for r in port.results()] == ["SUCCESS"]
    assert port.reasons() == ["internal error: RuntimeError: observer broke"]


class _RealKeysPort(RecordingPort):
    """Refuses a park routing key over 255 bytes, as the AMQP client does."""

    async def park(self, queue, message, delay):
        from amqtask.worker import delays

        if len(delays.park_route(delay, queue)[1].encode()) > 255:
            raise ValueError("routing key too long")
        await super().park(queue, message, delay)


LONG_QUEUE = "q." * 50 + "x"  # dots are encoded as %2E in the park key: 201 bytes of it


@pytest.mark.parametrize("waits,runs", [
    ("countdown", 0),  # parked before it runs
    ("retry", 1),  # parked after it ran
])
def test_a_queue_name_too_long_to_park_fails_the_task_with_the_reason(waits, runs):
    """Before: the park raised, an internal error without a result for the client."""
    app = make_app()
    if waits == "countdown":
        wire = task_wire(eta=utcnow() + dt.timedelta(hours=1))
    else:
        wire = task_wire("t.retry", (1,))
    port = _RealKeysPort()
    pool = InlinePool(app)
    handler = Handler(app, HandlerConfig("w@test"), pool, port)
    settles: list = []
    asyncio.run(handler.handle(Delivery(wire, LONG_QUEUE, lambda o: settles.append(o) or True,
                                        routing_key=LONG_QUEUE)))
    assert settles == [Settle.ACK] and len(pool.runs) == runs and handler.stats.internal_errors == 0
    assert port.parked == [] and port.reasons()[0].startswith("queue name too long to be parked")
    final = port.results()[-1]
    assert final["status"] == "FAILURE" and final["result"]["exc_type"] == "RoutingError"
    assert "too long to be parked" in final["result"]["exc_message"][0]


@pytest.mark.parametrize("compression,on_the_loop", [(None, True), ("zlib", False), ("bzip2", False)])
def test_compressed_bodies_are_decoded_off_the_event_loop(monkeypatch, compression, on_the_loop):
    """Before: the choice went by the compressed size, and a 469-byte bzip2 body kept
    the loop (heartbeats, acks) busy for seconds. Small plain JSON stays on the loop."""
    from amqtask.worker import handler as handler_module

    threads = []
    original = handler_module.decode_task

    def recording(wire, codec):
        threads.append(threading.current_thread() is threading.main_thread())
        return original(wire, codec)

    monkeypatch.setattr(handler_module, "decode_task", recording)
    app = make_app()
    wire = task_wire(compression=compression)
    assert len(wire.body) < 1000
    settles, port, _ = handle(app, wire)
    assert settles == [Settle.ACK] and port.results()[0]["result"] == 5
    assert threads == [on_the_loop]


def test_a_revoked_chord_header_task_is_counted_as_a_failed_part():
    from amqtask.results.base import ResultStore

    class CountingStore(ResultStore):
        def __init__(self):
            self.parts = []

        async def store(self, meta):
            pass

        async def chord_part_return(self, group_id, task_id, index, state, result, chord_size):
            self.parts.append((group_id, task_id, state, result["exc_type"]))
            return None

    app = make_app()
    store = CountingStore()
    handler = Handler(app, HandlerConfig("w@test"), InlinePool(app), RecordingPort(), store=store)
    wire = task_wire(id="part-1", group="g-1", group_index=0, embed={"chord": {"task": "t.add", "chord_size": 2}})
    handler.revoked = {"part-1"}
    settles: list = []
    asyncio.run(handler.handle(delivery(wire, settles)))
    assert settles == [Settle.ACK] and app.ran == []
    assert store.parts == [("g-1", "part-1", "REVOKED", "TaskRevokedError")]


def test_what_a_task_acked_early_produced_is_tried_longer_then_reported_lost(monkeypatch, caplog):
    """acks_late off: nothing redelivers the message, so a result the backend keeps
    refusing is tried for longer, then counted and logged as lost. Before: given up
    after six tries with "the broker will redeliver it", which it would not."""
    from amqtask.worker import handler as handler_module

    monkeypatch.setattr(handler_module, "REPUBLISH_BACKOFF", (0.0,) * len(handler_module.REPUBLISH_BACKOFF))
    app = make_app()

    @app.task(name="t.early_value", acks_late=False)
    def early_value():
        return 1

    port = RecordingPort(fail_publishes=10_000)
    settles, port, handler = handle(app, task_wire("t.early_value", ()), port=port)
    assert settles == [Settle.ACK]
    assert 10_000 - port.fail_publishes == handler_module.ACKED_EARLY_ATTEMPTS > 2 * len(handler_module.REPUBLISH_BACKOFF)
    assert handler.stats.results_lost == 1
    assert "the result is lost" in caplog.text and "will redeliver" not in caplog.text


def test_an_internal_error_on_a_task_acked_early_still_tells_the_waiting_client(monkeypatch):
    """acks_late off: the message was acked before the run, so nothing redelivers it.
    Before: the handler saw a delivery it could not settle and stored nothing, so a
    get() without a timeout waited forever."""
    from amqtask.worker import handler as handler_module

    monkeypatch.setattr(handler_module, "REPUBLISH_BACKOFF", (0.0,) * len(handler_module.REPUBLISH_BACKOFF))
    app = make_app()

    @app.task(name="t.early_add", acks_late=False)
    def early_add(x, y):
        return x + y

    port = RecordingPort(fail_publishes=2)  # the broker refuses the result twice: tried again, as a result is
    settles, port, handler = handle(app, task_wire("t.early_add"), port=port, pool=_FailingPool(app))
    assert settles == [Settle.ACK] and handler.stats.internal_errors == 1  # the early ack, and nothing after it
    [result] = port.results()
    assert result["status"] == "FAILURE" and result["result"]["exc_message"] == [
        "internal error: RuntimeError: the pool broke"]
    assert port.reasons() == ["internal error: RuntimeError: the pool broke"]  # a copy kept for the operator


def test_stored_results_carry_what_celerys_backends_store():
    """STARTED holds the pid and hostname (Celery's mark_as_started) and the extended
    `queue` field the delivery's routing key (Celery's delivery_info['routing_key'])."""
    from amqtask.results.base import ResultStore

    class RecordingStore(ResultStore):
        def __init__(self):
            self.metas = []

        async def store(self, meta):
            self.metas.append(meta)

    app = make_app()
    app.tasks["t.add"].track_started = True
    store = RecordingStore()
    handler = Handler(app, HandlerConfig("w@test"), InlinePool(app), RecordingPort(), store=store)
    wire = task_wire(args=(2, 3), reply_to=None)

    def settle(outcome):
        return True

    routed = Delivery(wire, "proj.work", settle, routing_key="work", exchange="proj.x")
    asyncio.run(handler.handle(routed))
    started, done = store.metas
    assert (started.status, started.result) == ("STARTED", {"pid": os.getpid(), "hostname": "w@test"})
    assert (done.status, done.result) == ("SUCCESS", 5)
    assert started.queue == done.queue == "work"


def test_warm_shutdown_takes_back_jobs_queued_behind_a_busy_thread_at_once():
    """Jobs wait in the thread pool's queue; a warm shutdown returns them to their queue
    while the one thread is still busy, so the stop does not wait for them."""
    app = make_app()
    release = threading.Event()

    @app.task(name="t.busy")
    def busy():
        release.wait(10)
        return "done"

    async def scenario():
        pool = ThreadPool(app, 1, Codec(), "json")
        handler = Handler(app, HandlerConfig("w@test"), pool, RecordingPort())
        settles = {name: [] for name in ("busy", "q1", "q2")}
        running = asyncio.ensure_future(handler.handle(delivery(task_wire("t.busy", ()), settles["busy"])))
        while not handler.active:
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(handler.handle(delivery(task_wire(), settles[n]))) for n in ("q1", "q2")]
        await asyncio.sleep(0.05)
        handler.stop_taking()
        await asyncio.wait_for(asyncio.gather(*queued), 2)  # while the thread is still busy
        assert not running.done()
        release.set()
        await running
        await pool.stop()
        return settles

    settles = asyncio.run(scenario())
    assert settles == {"busy": [Settle.ACK], "q1": [Settle.REQUEUE], "q2": [Settle.REQUEUE]}
    assert app.ran == []  # neither queued task ran


def test_a_process_with_its_share_of_tasks_run_returns_the_next_to_the_queue():
    """--max-tasks-per-child for a process that runs tasks itself: its threads start
    tasks without the event loop, so the share is taken where a task starts."""
    app = make_app()

    async def scenario():
        handler = Handler(app, HandlerConfig("w@test"), InlinePool(app), RecordingPort())
        handler.starts_left = 1
        first, second = [], []
        await handler.handle(delivery(task_wire(args=(1, 1)), first))
        await handler.handle(delivery(task_wire(args=(2, 2)), second))
        return first, second

    first, second = asyncio.run(scenario())
    assert first == [Settle.ACK] and second == [Settle.REQUEUE]
    assert app.ran == [(1, 1)]
