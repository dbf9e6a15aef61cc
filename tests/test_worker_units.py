"""Pure parts of the worker: the delay cascade, retry rules, rate limits, testing broker."""
import json

import pytest

from amqtask import App
from amqtask.results import FAILURE, SUCCESS, exception_from_payload, exception_payload
from amqtask.serializers import Codec
from amqtask.testing import TestBroker
from amqtask.topology.loader import check_text
from amqtask.topology.model import Queue, Topology
from amqtask.worker import delays
from amqtask.worker.execute import RETRY, backoff, run_sync
from amqtask.worker.ratelimit import RateLimiter, parse_rate
from amqtask.worker.request import Request


def simulate_parking(delay_seconds: float, queue: str) -> int:
    """Follow a parked message through the cascade with the topology model, adding up
    the TTLs of the queues it waits in, until it reaches `queue`."""
    cascade = delays.delay_topology()
    topology = Topology.build(list(cascade.exchanges.values()), list(cascade.queues.values()) + [Queue(queue)],
                              list(cascade.bindings) + [delays.delivery_binding(queue)])
    exchange, key = delays.park_route(delay_seconds, queue)
    waited = 0
    for _ in range(delays.LEVELS + 1):
        [reached] = topology.route(exchange, key)
        if reached == queue:
            return waited
        spec = topology.queues[reached]
        waited += spec.arguments["x-message-ttl"]
        exchange = spec.arguments["x-dead-letter-exchange"]
    raise AssertionError("the message never came home")


@pytest.mark.parametrize("seconds", [0, 0.001, 1, 1.5, 5, 3600, 30 * 86400, 49 * 86400])
def test_cascade_waits_exactly_the_delay_rounded_up_to_the_ms(seconds):
    assert simulate_parking(seconds, "web.tasks") == min(delays.MAX_DELAY_MS, -(-int(seconds * 1e6) // 1000))


def test_queue_names_with_dots_and_wildcards_come_home_to_the_right_queue():
    for name in ("a.b", "b", "x*y", "#", "with space"):
        assert simulate_parking(2.5, name) == 2500


def test_retry_rules():
    app = App("t", settings=load_settings_text("{}"))

    @app.task(name="r", bind=True, max_retries=2)
    def r(self):
        raise self.retry(countdown=7, exc=KeyError("k"))

    codec = Codec()
    outcome = run_sync(r, Request(id="1", task="r", reply_to="q"), codec, "json")
    assert outcome.state == RETRY and outcome.countdown == 7
    assert json.loads(outcome.reply)["status"] == "RETRY"
    final = run_sync(r, Request(id="1", task="r", retries=2, reply_to="q"), codec, "json")
    assert final.state == FAILURE and final.reason.startswith("max retries (2) exceeded: KeyError")
    assert json.loads(final.reply)["result"]["exc_type"] == "KeyError"


def test_backoff_is_exponential_capped_and_jittered():
    app = App("t", settings=load_settings_text("{}"))
    plain = app.task(name="p", retry_backoff=2, retry_jitter=False, retry_backoff_max=20)(lambda: None)
    assert [backoff(plain, n) for n in range(5)] == [2, 4, 8, 16, 20]
    jittered = app.task(name="j", retry_backoff=True)(lambda: None)
    assert all(0 <= backoff(jittered, 3) <= 8 for _ in range(50))


def test_unencodable_result_is_a_clear_failure():
    app = App("t", settings=load_settings_text("{}"))
    task = app.task(name="o")(lambda: object())
    outcome = run_sync(task, Request(id="1", task="o", reply_to="q"), Codec(), "json")
    assert outcome.state == FAILURE and "cannot be encoded" in outcome.reason


def test_exceptions_round_trip_without_importing_modules():
    assert isinstance(exception_from_payload(exception_payload(ValueError("x"))), ValueError)
    custom = exception_from_payload({"exc_type": "PaymentDeclined", "exc_message": ["no"], "exc_module": "shop.x"},
                                    "Traceback...")
    assert type(custom).__name__ == "PaymentDeclined" and custom.args == ("no",) and custom.traceback


def test_rate_limits():
    assert parse_rate("500/m") == pytest.approx(500 / 60)
    assert parse_rate("10") == 10 and parse_rate(None) is None and parse_rate("0") is None
    with pytest.raises(ValueError):
        parse_rate("fast")
    limiter = RateLimiter()
    starts = [limiter.reserve("t", 5, 100.0) for _ in range(4)]
    assert starts == [100.0, 100.2, pytest.approx(100.4), pytest.approx(100.6)]
    assert limiter.reserve("other", 5, 100.0) == 100.0  # per task type


def test_testing_broker_routes_and_runs(example_config):
    app = App("t", config=example_config)

    @app.task(name="projq.tasks.add")
    def add(x, y):
        return x + y

    @app.task(name="projq.billing.invoice", bind=True)
    def invoice(self, n):
        if self.request.retries < 2:
            raise self.retry(countdown=60)
        return n

    with TestBroker(app) as broker:
        result = add.delay(2, 3)
        retried = invoice.delay(9)
        assert broker.queue_names_of(result) == ["web_tasks"]
        assert broker.queue_names_of(retried) == ["invoices"]
        assert [m.args for m in broker.messages("web_tasks")] == [(2, 3)]
        assert broker.run_all() == 4  # add, invoice and its two retries
        assert result.get() == 5 and result.state == SUCCESS
        assert retried.get() == 9
    assert app._publisher is None  # restored


def load_settings_text(text: str):
    return check_text(text, environ={}).settings


def test_load_app(tmp_path, monkeypatch):
    from amqtask.app import load_app
    from amqtask.errors import AmqtaskError

    (tmp_path / "myjobs.py").write_text("from amqtask import App\nmine = App('x', config=None)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_app("myjobs").name == "x" and load_app("myjobs:mine").name == "x"
    with pytest.raises(AmqtaskError):
        load_app("no_such_module_here")
    with pytest.raises(AmqtaskError):
        load_app("myjobs:missing")


def test_result_handle_for_an_unknown_id_says_so():
    from amqtask.results import UnknownTaskError

    app = App("t", settings=load_settings_text("{}"))
    with pytest.raises(UnknownTaskError) as exc:
        app.AsyncResult("not-sent-here").get(timeout=1)
    assert "not sent by this process" in str(exc.value)


class FakeChannel:
    is_closed = False

    def __init__(self):
        self.frames = []

    def basic_ack(self, delivery_tag, multiple):
        self.frames.append((delivery_tag, multiple))


def test_ack_batcher_coalesces_in_order_and_never_covers_a_running_message():
    import asyncio

    from amqtask.worker.acks import AckBatcher

    async def scenario():
        channel = FakeChannel()
        batcher = AckBatcher(channel, on_lost=lambda tag: None)
        for tag in range(1, 8):
            batcher.delivered(tag)
        for tag in (1, 2, 3):
            batcher.ack(tag)
        await asyncio.sleep(0)
        assert channel.frames == [(3, True)]
        batcher.ack(6)  # 4 and 5 still running: 6 alone
        await asyncio.sleep(0)
        assert channel.frames[-1] == (6, False)
        batcher.settled_elsewhere(4)  # nacked
        batcher.ack(5)
        batcher.ack(7)
        await asyncio.sleep(0)
        # 4 nacked, 5 acked, 6 acked already, 7 acked: one multiple ack up to 7
        assert channel.frames[-1] == (7, True) and len(channel.frames) == 3

    asyncio.run(scenario())


def test_ack_batcher_holds_acks_while_the_pool_has_work_in_hand():
    import asyncio

    from amqtask.worker.acks import AckBatcher

    async def scenario():
        channel = FakeChannel()
        # window 8, 2 slots: hold while >= 2 delivered messages are unsettled, flush at 4 waiting acks
        batcher = AckBatcher(channel, on_lost=lambda tag: None, window=8, slots=2, max_delay=10)
        for tag in range(1, 9):
            batcher.delivered(tag)
        batcher.ack(1)
        batcher.ack(2)
        await asyncio.sleep(0)
        assert channel.frames == []  # 6 unsettled: the pool is busy, the acks wait
        batcher.ack(3)
        batcher.ack(4)
        await asyncio.sleep(0)
        assert channel.frames == [(4, True)]  # half the window waiting: flushed
        for tag in (5, 6, 7):
            batcher.ack(tag)
        await asyncio.sleep(0)
        assert channel.frames[-1] == (7, True)  # one unsettled left: nothing to hold for

    asyncio.run(scenario())


def test_ack_batcher_sends_held_acks_at_the_deadline_and_on_drain():
    import asyncio

    from amqtask.worker.acks import AckBatcher

    async def scenario():
        channel = FakeChannel()
        batcher = AckBatcher(channel, on_lost=lambda tag: None, window=16, slots=2, max_delay=0.02)
        for tag in range(1, 11):
            batcher.delivered(tag)
        batcher.ack(1)
        await asyncio.sleep(0)
        assert channel.frames == []
        await asyncio.sleep(0.05)  # a long task must not keep an ack back for longer
        assert channel.frames == [(1, True)]
        batcher.ack(2)
        await asyncio.sleep(0)
        assert channel.frames == [(1, True)]
        await batcher.drain()  # shutting down: everything due goes out now
        assert channel.frames == [(1, True), (2, True)]

    asyncio.run(scenario())


def test_ack_batcher_reports_acks_it_could_not_send():
    import asyncio

    from amqtask.worker.acks import AckBatcher

    class ClosedChannel(FakeChannel):
        def basic_ack(self, delivery_tag, multiple):
            raise RuntimeError("channel closed")

    async def scenario():
        lost = []
        batcher = AckBatcher(ClosedChannel(), on_lost=lost.append, window=8, slots=2)
        for tag in (1, 2, 3):
            batcher.delivered(tag)
            batcher.ack(tag)
        await batcher.drain()
        assert lost == [3]  # one multiple ack up to 3 was refused: all three will be redelivered

    asyncio.run(scenario())


def test_thread_pool_cold_stop_cancels_queued_jobs_and_may_be_repeated():
    import asyncio
    import threading

    from amqtask.worker.pools import _Threads

    async def scenario():
        threads = _Threads(1)
        started, release = threading.Event(), threading.Event()

        def hold() -> bool:
            started.set()
            return release.wait(5)

        running = threads.submit(hold)
        queued = threads.submit(lambda: "never")
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        await threads.stop(cold=True)
        assert queued.cancelled() and not running.done()
        await threads.stop(cold=True)  # a second stop finds only sentinels: no error
        release.set()
        assert await running is True  # the running job still reports back

    asyncio.run(scenario())


def test_thread_pool_batches_results_and_hands_back_exceptions():
    import asyncio

    from amqtask.worker.pools import _Threads

    async def scenario():
        threads = _Threads(2)
        futures = [threads.submit(lambda i=i: i * 2) for i in range(50)]
        failing = threads.submit(lambda: 1 / 0)
        assert await asyncio.gather(*futures) == [i * 2 for i in range(50)]
        try:
            await failing
        except ZeroDivisionError:
            pass
        else:
            raise AssertionError("the job's exception was not handed back")
        await threads.stop()

    asyncio.run(scenario())
