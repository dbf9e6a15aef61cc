"""Pure parts of the worker: the delay cascade, retry rules, rate limits, testing broker."""

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


def simulate_parking(delay_seconds: float, queue: str, cascade: delays.Cascade = delays.CLASSIC) -> int:
    """Follow a parked message through the cascade with the topology model, adding up
    the TTLs of the queues it waits in, until it reaches `queue`."""
    plan = cascade.topology()
    topology = Topology.build(list(plan.exchanges.values()), list(plan.queues.values()) + [Queue(queue)],
                              list(plan.bindings) + [cascade.delivery_binding(queue)])
    exchange, key = cascade.park_route(delay_seconds, queue)
    waited = 0
    for _ in range(delays.LEVELS + 1):
        [reached] = topology.route(exchange, key)
        if reached == queue:
            return waited
        spec = topology.queues[reached]
        assert spec.queue_type == ("quorum" if cascade is delays.QUORUM else "classic")
        waited += spec.arguments["x-message-ttl"]
        exchange = spec.arguments["x-dead-letter-exchange"]
    raise AssertionError("the message never came home")


@pytest.mark.parametrize("seconds", [0, 0.001, 1, 1.5, 5, 3600, 30 * 86400, 49 * 86400])
def test_cascade_waits_exactly_the_delay_rounded_up_to_the_ms(seconds):
    assert simulate_parking(seconds, "web.tasks") == min(delays.MAX_DELAY_MS, -(-int(seconds * 1e6) // 1000))


def test_queue_names_with_dots_and_wildcards_come_home_to_the_right_queue():
    for name in ("a.b", "b", "x*y", "#", "with space"):
        assert simulate_parking(2.5, name) == 2500


@pytest.mark.parametrize("seconds", [0.001, 1.5, 3600, 49 * 86400])
def test_quorum_cascade_waits_the_same_in_quorum_queues_of_its_own(seconds):
    assert simulate_parking(seconds, "q.tasks", delays.QUORUM) == simulate_parking(seconds, "q.tasks")
    classic, quorum = delays.CLASSIC.topology(), delays.QUORUM.topology()
    assert not set(classic.queues) & set(quorum.queues) and not set(classic.exchanges) & set(quorum.exchanges)
    for level in quorum.queues.values():
        if "x-message-ttl" in level.arguments:  # at-least-once dead-lettering needs reject-publish
            assert level.arguments["x-dead-letter-strategy"] == "at-least-once"
            assert level.arguments["x-overflow"] == "reject-publish"


def test_a_quorum_queue_gets_the_quorum_cascade_and_a_quorum_dead_queue():
    quorum, classic = Queue("q", arguments={"x-queue-type": "quorum"}), Queue("c")
    topology = Topology.build([], [quorum, classic], [])
    assert delays.cascade_for("q", topology) is delays.QUORUM and delays.cascade_for(classic) is delays.CLASSIC
    assert delays.cascade_for("unknown", topology) is delays.CLASSIC
    assert delays.dead_letter_queue_for(quorum).queue_type == "quorum"
    assert delays.dead_letter_queue_for("c", topology).queue_type == "classic"
    assert delays.dead_letter_queue_for("q", topology).name == "q.dead"


def test_delivery_limit_reason_on_the_last_delivery_of_a_quorum_queue_only():
    limited = Queue("q", arguments={"x-queue-type": "quorum", "x-delivery-limit": 3})
    assert delays.delivery_limit_reason(limited, {}) is None
    assert delays.delivery_limit_reason(limited, {"x-delivery-count": 2}) is None
    reason = delays.delivery_limit_reason(limited, {"x-delivery-count": 3})
    assert reason is not None and "delivery limit" in reason and "4 times" in reason
    unlimited = Queue("q", arguments={"x-queue-type": "quorum"})
    assert delays.delivery_limit_reason(unlimited, {"x-delivery-count": 99}) is None
    classic = Queue("c", arguments={"x-delivery-limit": 3})
    assert delays.delivery_limit_reason(classic, {"x-delivery-count": 3}) is None


def test_retry_rules():
    app = App("t", settings=load_settings_text("{}"))

    @app.task(name="r", bind=True, max_retries=2)
    def r(self):
        raise self.retry(countdown=7, exc=KeyError("k"))

    codec = Codec()
    outcome = run_sync(r, Request(id="1", task="r", reply_to="q"), codec, "json")
    assert outcome.state == RETRY and outcome.countdown == 7
    assert outcome.exc_payload["exc_type"] == "KeyError" and "Traceback" in outcome.traceback
    final = run_sync(r, Request(id="1", task="r", retries=2, reply_to="q"), codec, "json")
    assert final.state == FAILURE and final.reason.startswith("max retries (2) exceeded: KeyError")
    assert final.exc_payload["exc_type"] == "KeyError"


def test_backoff_is_exponential_capped_and_jittered():
    app = App("t", settings=load_settings_text("{}"))
    plain = app.task(name="p", retry_backoff=2, retry_jitter=False, retry_backoff_max=20)(lambda: None)
    assert [backoff(plain, n) for n in range(5)] == [2, 4, 8, 16, 20]
    jittered = app.task(name="j", retry_backoff=True)(lambda: None)
    assert all(0 <= backoff(jittered, 3) <= 8 for _ in range(50))


def test_unencodable_result_is_a_clear_failure():
    app = App("t", settings=load_settings_text("{}"))
    task = app.task(name="o")(lambda: object())
    outcome = run_sync(task, Request(id="1", task="o", reply_to="q", headers={"result": True}), Codec(), "json")
    assert outcome.state == FAILURE and "cannot be encoded" in outcome.reason
    # Nobody wants the value: nothing to encode, nothing to fail.
    assert run_sync(task, Request(id="2", task="o"), Codec(), "json").state == "SUCCESS"


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

    app = App("t", settings=load_settings_text("results: {backend: 'rpc://'}"))
    with pytest.raises(UnknownTaskError) as exc:
        app.AsyncResult("not-sent-here").get(timeout=1)
    assert "not sent by this process" in str(exc.value)


def test_results_are_off_unless_a_backend_is_configured():
    from amqtask.results import ResultsDisabled

    app = App("t", settings=load_settings_text("{}"))
    assert app.backend is None
    with pytest.raises(ResultsDisabled) as exc:
        app.AsyncResult("some-id").get(timeout=1)
    assert "no result backend is configured" in str(exc.value)


class FakeChannel:
    is_closed = False

    def __init__(self):
        self.frames = []

    def basic_ack(self, delivery_tag, multiple):
        self.frames.append((delivery_tag, multiple))

    async def basic_nack(self, delivery_tag, requeue):
        self.frames.append(("nack", delivery_tag, requeue))


def test_ack_batcher_coalesces_in_order_and_never_covers_a_running_message():
    import asyncio

    from amqtask.amqp.acks import AckBatcher

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
        batcher.nack(4, requeue=True)
        batcher.ack(5)
        batcher.ack(7)
        for _ in range(3):
            await asyncio.sleep(0)
        # The nack goes out, and no multiple ack covers 4 before it (that would ack it).
        nack_at = channel.frames.index(("nack", 4, True))
        assert not any(f[1] is True and f[0] >= 4 for f in channel.frames[:nack_at])
        # Every other tag is acked exactly once: 1-3 by the first frame, then 5, 6, 7.
        acked = set()
        for frame in channel.frames:
            if frame[0] == "nack":
                continue
            tag, multiple = frame
            covered = {t for t in range(1, tag + 1) if t != 4} - acked if multiple else {tag}
            assert not covered & acked
            acked |= covered
        assert acked == {1, 2, 3, 5, 6, 7}

    asyncio.run(scenario())


def test_ack_batcher_holds_acks_while_the_pool_has_work_in_hand():
    import asyncio

    from amqtask.amqp.acks import AckBatcher

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

    from amqtask.amqp.acks import AckBatcher

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

    from amqtask.amqp.acks import AckBatcher

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


def test_thread_pool_cold_stop_ends_queued_jobs_cancelled_and_may_be_repeated():
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
        assert (await queued).state == "CANCELLED" and not running.done()  # its message goes back to the queue
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



def test_a_worker_reconnects_starting_with_the_node_after_the_one_it_lost(monkeypatch):
    """On a cluster, the node just lost (perhaps silent, partitioned) is tried last;
    a node that accepted the connection but refused the setup is tried last next time."""
    import asyncio
    import types

    from amqtask.amqp import consumer as consumer_module
    from amqtask.amqp.connection import failover_order
    from amqtask.brokerurl import parse_broker_urls
    from amqtask.settings import BrokerSettings

    urls = parse_broker_urls("amqp://h1:5672//;amqp://h2:5672//;amqp://h3:5672//")
    broker = BrokerSettings(urls=urls)
    asked: list = []
    setups: list = []

    async def close():
        return None

    def connection_to(url):
        return types.SimpleNamespace(url=types.SimpleNamespace(host=url.host, port=url.port), close=close)

    async def fake_open(broker_settings, name, *, after=None):
        asked.append(after.host if after else None)
        return connection_to(failover_order(broker_settings.urls, after)[0])

    async def fake_setup(connection):
        setups.append(connection.url.host)
        if len(setups) == 1:
            raise RuntimeError("declare refused")

    monkeypatch.setattr(consumer_module, "connect", fake_open)
    monkeypatch.setattr(consumer_module, "RECONNECT_DELAYS", (0.0,))
    consumer = consumer_module.AmqpConsumer(broker, Topology.build([], [], []),
                                            consumer_module.ConsumerConfig(("q",), 1, 1, "t"), None)
    consumer._connection = connection_to(urls[0])  # the connection it lost was to h1
    monkeypatch.setattr(consumer, "_setup", fake_setup)
    asyncio.run(asyncio.wait_for(consumer._reconnect(), 5))
    assert asked == ["h1", "h2"] and setups == ["h2", "h3"]
    assert consumer._connection.url.host == "h3" and consumer.reconnects == 1


@pytest.mark.parametrize("pool_name", ["threads", "solo", "asyncio"])
def test_revoke_with_terminate_says_why_a_task_outside_prefork_runs_on(pool_name):
    """Before: the reply was "terminate: tasks unknown" for a task that was running."""
    import types

    from amqtask.control.commands import Context
    from amqtask.control.node import ControlNode
    from amqtask.control.revoked import RevokedSet
    from amqtask.events import LamportClock
    from amqtask.serializers import Codec
    from amqtask.worker.pools import make_pool
    from amqtask.worker.view import WorkerState

    app = App("t", settings=load_settings_text("{}"))
    handler = types.SimpleNamespace(active={"running-1": object()}, terminated=set())
    worker = types.SimpleNamespace(handler=handler, pool=make_pool(pool_name, app, 1, Codec(), "json"))
    revoked = RevokedSet()
    context = Context(hostname="w@test", view=WorkerState(worker), settings=app.settings, revoked=revoked,
                      clock=LamportClock(), pid=1)
    reply = ControlNode(context, mode="all").dispatch("revoke", {"task_id": ["running-1"], "terminate": True})
    assert "cannot be terminated" in reply["error"] and f"the {pool_name} pool" in reply["error"]
    assert "prefork" in reply["error"] and "running-1" in revoked and handler.terminated == set()


# -- the prefork pool ----------------------------------------------------------------------
class CountingMetrics:
    def __init__(self) -> None:
        self.children_replaced = 0

    def pool_child_replaced(self) -> None:
        self.children_replaced += 1


def blocking_app():
    """An app with t.block(started, release): it creates `started`, then runs until
    `release` exists (at most a minute)."""
    import os
    import time

    app = App("t", settings=load_settings_text("{}"))

    @app.task(name="t.block")
    def block(started, release):
        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return "released"

    return app


async def until(condition, what: str) -> None:
    """Poll `condition` on the loop (the pool's callbacks run meanwhile); fail after a minute."""
    import asyncio

    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def start_block(pool, app, tmp_path, task_id: str):
    """Run t.block in the pool; (the run, the file it creates when it starts, the file that releases it)."""
    import asyncio

    from amqtask.worker.pools import Limits

    started, release = tmp_path / f"{task_id}.started", tmp_path / f"{task_id}.release"
    request = Request(id=task_id, task="t.block", args=(str(started), str(release)))

    async def run():
        return await pool.run(app.tasks["t.block"], request, Limits())

    return asyncio.ensure_future(run()), started, release


def test_prefork_revoke_with_terminate_and_term_stops_the_task_a_term_from_outside_does_not(tmp_path):
    """Before: children ignore SIGTERM (so a service manager's TERM to the whole group
    leaves tasks running), and the pool sent them the TERM asked for: the task ran on."""
    import asyncio
    import os
    import signal

    from amqtask.worker.execute import SUCCESS as RAN, WORKER_LOST
    from amqtask.worker.pools import PreforkPool

    app = blocking_app()
    metrics = CountingMetrics()

    async def scenario():
        pool = PreforkPool(app, 1, Codec(), "json", metrics=metrics)
        await pool.start()
        try:
            run, started, release = start_block(pool, app, tmp_path, "outside")
            await until(started.exists, "the task to start")
            os.kill(pool.pid_of("outside"), signal.SIGTERM)  # as a TERM to the whole process group
            release.touch()
            assert (await asyncio.wait_for(run, 60)).state == RAN

            run, started, _ = start_block(pool, app, tmp_path, "revoked")
            await until(started.exists, "the second task to start")
            assert pool.terminate("revoked", signal.SIGTERM)
            assert (await asyncio.wait_for(run, 60)).state == WORKER_LOST
            await until(lambda: len(pool.child_pids()) == 1, "a new child")
        finally:
            await pool.stop(cold=True)

    asyncio.run(scenario())
    assert metrics.children_replaced == 1


def test_prefork_children_that_die_are_counted_retired_ones_are_not(tmp_path):
    """Before: the pool counted replaced children in an attribute nobody read, so
    amqtask_pool_children_replaced_total stayed 0."""
    import asyncio
    import os
    import signal

    from amqtask.worker.execute import SUCCESS as RAN
    from amqtask.worker.pools import PreforkPool

    app = blocking_app()
    metrics = CountingMetrics()

    async def scenario():
        pool = PreforkPool(app, 1, Codec(), "json", max_tasks_per_child=1, metrics=metrics)
        await pool.start()
        try:
            [first] = pool.child_pids()
            run, _, release = start_block(pool, app, tmp_path, "retires")
            release.touch()
            assert (await asyncio.wait_for(run, 60)).state == RAN  # its child retires after one task
            await until(lambda: pool.child_pids() not in ([], [first]), "the retired child's successor")
            [second] = pool.child_pids()
            os.kill(second, signal.SIGKILL)
            await until(lambda: pool.child_pids() not in ([], [second]), "the killed child's successor")
        finally:
            await pool.stop(cold=True)

    asyncio.run(scenario())
    assert metrics.children_replaced == 1  # the killed one; the retired one was planned



# -- pool size, autoscale and the prefetch window ------------------------------------------
class SizedPool:
    """Only counts its slots."""

    def __init__(self, size: int) -> None:
        self.concurrency = size

    def grow(self, n: int) -> None:
        self.concurrency += n

    def shrink(self, n: int) -> None:
        self.concurrency -= n


def test_autoscale_bounds_change_at_run_time_and_the_pool_follows_at_once():
    """Before: the bounds were the worker's frozen --autoscale tuple."""
    from amqtask.control.view import ControlRefused
    from amqtask.worker.worker import Autoscaler

    pool = SizedPool(2)
    scaler = Autoscaler(pool, 4, 1, clock=lambda: 0.0)
    assert scaler.update(6, 3) == (6, 3) and pool.concurrency == 3  # grown to the new min
    scaler.scale(busy=10)
    assert pool.concurrency == 6  # grows with the work in hand up to the new max
    with pytest.raises(ControlRefused, match="min"):
        scaler.update(2, None)  # min 3 would exceed max 2
    assert (scaler.high, scaler.low, pool.concurrency) == (6, 3, 6)  # a refused update changes nothing
    assert scaler.update(2, 0) == (2, 1) and pool.concurrency == 2  # shrunk to the new max; min 0 keeps a slot
    scaler.scale(busy=10)
    assert pool.concurrency == 2


def worker_for_control(**config):
    """A Worker, not started, whose consumer records the prefetch windows asked of it."""
    from amqtask.worker.worker import Worker, WorkerConfig

    worker = Worker(App("t", settings=load_settings_text("{}")), WorkerConfig(queues=("q",), **config))
    windows: list = []

    async def set_prefetch(prefetch, *, slots):
        windows.append((prefetch, slots))

    worker.consumer.set_prefetch = set_prefetch
    return worker, windows


def test_pool_grow_and_shrink_resize_the_prefetch_window():
    """Before: the window stayed concurrency x multiplier as at start (8 for 2 slots
    after growing to 4), and so did stats.prefetch_count."""
    import asyncio

    from amqtask.worker.view import WorkerState

    async def scenario():
        worker, windows = worker_for_control(pool="threads", concurrency=2, prefetch_multiplier=4)
        view = WorkerState(worker)
        view.pool_grow(2)
        await asyncio.sleep(0)
        view.pool_shrink(3)
        await asyncio.sleep(0)
        assert windows == [(16, 4), (4, 1)]
        await worker.pool.stop()

    asyncio.run(scenario())


def test_autoscale_owns_the_pool_size_and_sizes_the_window_for_its_max():
    """As Celery: pool_grow and pool_shrink are refused under autoscale (the autoscaler
    would undo them), autoscale is refused without it; a new max resizes the window."""
    import asyncio

    from amqtask.control.view import ControlRefused
    from amqtask.worker.view import WorkerState

    async def scenario():
        worker, windows = worker_for_control(pool="threads", autoscale=(3, 1), prefetch_multiplier=2)
        view = WorkerState(worker)
        for change in (view.pool_grow, view.pool_shrink):
            with pytest.raises(ControlRefused, match="not supported with autoscale"):
                change(1)
        assert view.autoscale(5, 2) == (5, 2) and worker.pool.concurrency == 2
        await asyncio.sleep(0)
        assert windows == [(10, 5)]
        await worker.pool.stop()

        plain, _ = worker_for_control(pool="threads", concurrency=2)
        with pytest.raises(ControlRefused, match="^Autoscale not enabled$"):
            WorkerState(plain).autoscale(4, 2)

    asyncio.run(scenario())


def test_ack_batcher_follows_a_new_window_and_pool_size():
    import asyncio

    from amqtask.amqp.acks import AckBatcher

    async def scenario():
        channel = FakeChannel()
        batcher = AckBatcher(channel, on_lost=lambda tag: None, window=4, slots=1, max_delay=10)
        batcher.resize(window=16, slots=4)  # the pool grew from 1 slot to 4
        for tag in range(1, 11):
            batcher.delivered(tag)
        for tag in (1, 2, 3):
            batcher.ack(tag)
        await asyncio.sleep(0)
        assert channel.frames == []  # 7 in hand for 4 slots, 3 waiting of 8: held (window 4 flushed at 2)
        await batcher.drain()

    asyncio.run(scenario())


def test_a_new_window_is_set_with_basic_qos_then_each_queue_consumed_anew():
    """RabbitMQ applies a per-consumer basic.qos only to consumers created after it."""
    import asyncio
    import types

    from amqtask.amqp.acks import AckBatcher
    from amqtask.amqp.consumer import AmqpConsumer, ConsumerConfig
    from amqtask.settings import BrokerSettings

    class Channel(FakeChannel):
        consumers = 0

        async def basic_qos(self, prefetch_count, global_):
            self.frames.append(("qos", prefetch_count, global_))

        async def basic_cancel(self, tag):
            self.frames.append(("cancel", tag))

        async def basic_consume(self, queue, callback):
            self.consumers += 1
            self.frames.append(("consume", queue))
            return types.SimpleNamespace(consumer_tag=f"new-{self.consumers}")

    async def scenario():
        consumer = AmqpConsumer(BrokerSettings(), Topology.build([], [], []),
                                ConsumerConfig(("q1", "q2"), 4, 1, "t"), None)
        channel = Channel()
        consumer._channel, consumer._batcher = channel, AckBatcher(channel, on_lost=lambda tag: None)
        consumer._consumers = {"t1": "q1", "t2": "q2"}
        consumer.consuming = True
        await consumer.set_prefetch(8, slots=2)
        assert channel.frames == [("qos", 8, False), ("cancel", "t1"), ("consume", "q1"), ("cancel", "t2"),
                                  ("consume", "q2")]
        assert consumer.prefetch == 8 and consumer._consumers == {"new-1": "q1", "new-2": "q2"}
        await consumer.set_prefetch(8, slots=2)  # unchanged: nothing sent
        consumer.consuming = False  # reconnecting: the next channel is set up with the new window
        await consumer.set_prefetch(2, slots=1)
        assert len(channel.frames) == 5 and consumer.prefetch == 2

    asyncio.run(scenario())


def test_a_hung_thread_is_reported_and_a_warm_stop_does_not_wait_for_it():
    """Before: a warm stop joined every thread, so one past its hard time limit held
    the shutdown for as long as its task ran (for ever, in the worst case)."""
    import asyncio
    import threading

    from amqtask.worker.pools import Limits, ThreadPool
    from amqtask.worker.request import Request

    app = App("t", settings=load_settings_text("{}"))
    release = threading.Event()

    @app.task(name="t.hang")
    def hang():
        release.wait(30)

    hung = []

    async def scenario():
        pool = ThreadPool(app, 2, Codec(), "json")
        pool.on_hung = lambda name, task_id: hung.append((name, task_id))
        outcome = await pool.run(app.tasks["t.hang"], Request(id="h-1", task="t.hang"), Limits(hard=0.2))
        assert outcome.state == "FAILURE" and "TimeLimitExceeded" in outcome.reason
        await asyncio.wait_for(pool.stop(), 5)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
    assert hung == [("t.hang", "h-1")]
