"""Celery's event messages: fields, utcoffset, Lamport clock, the non-blocking
dispatcher and the heartbeat schedule. Celery itself is the reference where it
can be (it is in the test extra)."""
from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from celery.events.state import State
from celery.utils import time as celery_time
from kombu.clocks import LamportClock as KombuClock

from amqtask.events import EventDispatcher, EventFactory, HeartbeatSchedule, LamportClock, routing_key, utcoffset
from amqtask.events.build import bounded_repr, group_of, load_average
from amqtask.events.dispatcher import DROP_BLOCKED, DROP_FULL, DROP_UNSENT

COMMON = {"type", "hostname", "timestamp", "utcoffset", "pid", "clock"}


def factory(**kw) -> EventFactory:
    return EventFactory(hostname="w1@host", clock=LamportClock(), pid=42, now=lambda: 1000.0, offset=lambda: 0.0,
                        **kw)


def test_worker_events_carry_celerys_fields():
    event = factory().worker("worker-heartbeat", freq=2, active=3, processed=10, loadavg=[0.5, 0.25, 0.1])
    assert set(event) == COMMON | {"freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"}
    assert event["type"] == "worker-heartbeat" and event["freq"] == 2.0 and isinstance(event["freq"], float)
    assert (event["active"], event["processed"], event["loadavg"]) == (3, 10, [0.5, 0.25, 0.1])
    assert event["sw_ident"] == "py-amqtask" and event["hostname"] == "w1@host" and event["pid"] == 42


@pytest.mark.parametrize("build, extra", [
    (lambda f: f.task_received(uuid="u", name="t.add", args="(1, 2)", kwargs="{}", root_id="r", parent_id=None,
                               retries=1, eta=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), expires=None),
     {"uuid", "name", "args", "kwargs", "root_id", "parent_id", "retries", "eta", "expires"}),
    (lambda f: f.task_started(uuid="u"), {"uuid"}),
    (lambda f: f.task_succeeded(uuid="u", result={"a": 1}, runtime=0.5), {"uuid", "result", "runtime"}),
    (lambda f: f.task_failed(uuid="u", exception=ValueError("x"), traceback="tb"), {"uuid", "exception", "traceback"}),
    (lambda f: f.task_retried(uuid="u", exception="KeyError('k')", traceback="tb"),
     {"uuid", "exception", "traceback"}),
    (lambda f: f.task_revoked(uuid="u", expired=True), {"uuid", "terminated", "signum", "expired"}),
    (lambda f: f.task_rejected(uuid="u", requeue=False), {"uuid", "requeue"}),
])
def test_task_events_carry_exactly_celerys_fields(build, extra):
    assert set(build(factory())) == COMMON | extra


def test_task_event_values_are_what_celery_sends():
    f = factory()
    received = f.task_received(uuid="u", name="t", args="()", kwargs="{}",
                               eta=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    assert received["eta"] == "2030-01-01T00:00:00+00:00" and received["expires"] is None
    assert f.task_succeeded(uuid="u", result={"a": 1}, runtime=0.5)["result"] == "{'a': 1}"
    failed = f.task_failed(uuid="u", exception=ValueError("x"), traceback="Traceback...")
    assert failed["exception"] == "ValueError('x')" and failed["traceback"] == "Traceback..."
    assert f.task_revoked(uuid="u")["terminated"] is False


def test_results_and_tracebacks_are_bounded():
    assert len(bounded_repr("x" * 100_000)) <= 1024
    assert len(factory().task_failed(uuid="u", exception="e", traceback="y" * 100_000)["traceback"]) <= 16_384

    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    assert "Hostile" in bounded_repr(Hostile())  # a raising __repr__ never loses the event


def test_celerys_state_reads_our_events_as_a_live_worker_and_a_finished_task():
    """celery.events.state.State is what Flower and `celery events` build from events."""
    f = EventFactory(hostname="w1@host", clock=LamportClock())
    state = State()

    def receive(event):  # what celery's EventReceiver adds on receipt
        state.event({**event, "local_received": time.time()})

    receive(f.worker("worker-online", freq=2, active=0, processed=0))
    receive(f.task_received(uuid="u1", name="t.add", args="(1, 2)", kwargs="{}"))
    receive(f.task_started(uuid="u1"))
    receive(f.task_succeeded(uuid="u1", result=3, runtime=0.25))
    worker = state.workers["w1@host"]
    assert worker.alive and worker.sw_ident == "py-amqtask"
    task = state.tasks["u1"]
    assert (task.state, task.name, task.result, task.runtime, task.worker.hostname) == \
        ("SUCCESS", "t.add", "3", 0.25, "w1@host")


def test_routing_key_and_group():
    assert routing_key("task-succeeded") == "task.succeeded"
    assert routing_key("worker-heartbeat") == "worker.heartbeat"
    assert group_of("task-received") == "task" and group_of("worker-offline") == "worker"


def test_load_average_is_three_rounded_numbers():
    values = load_average()
    assert len(values) == 3 and all(round(v, 2) == v for v in values)


# -- utcoffset ------------------------------------------------------------------------------
@pytest.mark.parametrize("timezone, altzone, isdst, expected", [
    (0, -3600, 0, 0.0),               # UTC
    (-3600, -7200, 0, -1.0),          # Paris in winter: one hour EAST is negative
    (-3600, -7200, 1, -2.0),          # Paris in summer
    (18000, 14400, 0, 5.0),           # New York: five hours WEST is positive
    (18000, 14400, 1, 4.0),
    (-19800, -19800, 0, -5.5),        # India: true division, not -6
    (12600, 9000, 0, 3.5),            # Newfoundland
])
def test_utcoffset_has_celerys_sign_and_division(timezone, altzone, isdst, expected):
    local = time.struct_time((2024, 1, 1, 0, 0, 0, 0, 1, isdst))
    ours = utcoffset(localtime=lambda: local, timezone=timezone, altzone=altzone)

    class FakeTime:
        pass

    FakeTime.timezone, FakeTime.altzone = timezone, altzone
    assert ours == expected == celery_time.utcoffset(time=FakeTime, localtime=lambda: local)


def test_receivers_recover_the_true_time_from_our_offset():
    # A worker in India (-5.5) sends at true epoch T; a receiver in New York (+5)
    # adjusts with celery's formula and must get T back.
    true_time = 1_700_000_000.0
    adjusted = celery_time.adjust_timestamp(true_time, -5.5, here=lambda: 5.0)
    assert adjusted == true_time - (-5.5 - 5.0) * 3600
    assert celery_time.adjust_timestamp(true_time, utcoffset(), here=utcoffset) == true_time


# -- Lamport clock --------------------------------------------------------------------------
def test_clock_matches_kombus():
    ours, theirs = LamportClock(), KombuClock()
    for step in ("f", ("a", 10), "f", ("a", 3), ("a", 50), "f"):
        if step == "f":
            assert ours.forward() == theirs.forward()
        else:
            assert ours.adjust(step[1]) == theirs.adjust(step[1])
    assert ours.value == theirs.value


@pytest.mark.parametrize("garbage", [None, "12", 1.5, True, -5, 2**70, [1]])
def test_clock_ignores_garbage_headers(garbage):
    clock = LamportClock(7)
    assert clock.adjust(garbage) == 8


def test_clock_is_thread_safe():
    clock = LamportClock()
    threads = [threading.Thread(target=lambda: [clock.forward() for _ in range(10_000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.value == 40_000


# -- dispatcher -----------------------------------------------------------------------------
def test_task_events_follow_the_switch_and_worker_events_stay_on():
    d = EventDispatcher(factory(), task_events=False)
    d.task_received(uuid="u", name="t", args="()", kwargs="{}")
    assert d.counts().queued == 0
    assert d.enable_task_events() is True and d.enable_task_events() is False
    d.task_started(uuid="u")
    d.send(d.factory.worker("worker-heartbeat", freq=2, active=0, processed=0))
    assert [e["type"] for e in d.take(10)] == ["task-started", "worker-heartbeat"]
    assert d.disable_task_events() is True and d.disable_task_events() is False
    d.task_succeeded(uuid="u", result=1, runtime=0.1)
    assert d.take(10) == []


def test_worker_events_can_be_off():
    d = EventDispatcher(factory(), worker_events=False)
    assert d.send(d.factory.worker("worker-online", freq=2, active=0, processed=0)) is False


def test_a_full_buffer_drops_and_counts_instead_of_waiting():
    dropped: list[tuple[str, int]] = []
    d = EventDispatcher(factory(), task_events=True, capacity=3, on_drop=lambda r, n: dropped.append((r, n)))
    for i in range(5):
        d.task_started(uuid=str(i))
    counts = d.counts()
    assert counts.queued == 3 and counts.dropped[DROP_FULL] == 2 and dropped == [(DROP_FULL, 1)] * 2
    assert [e["uuid"] for e in d.take(10)] == ["0", "1", "2"]  # oldest first, the newest dropped


def test_a_blocked_link_drops_what_is_buffered_and_what_comes_until_unblocked():
    d = EventDispatcher(factory(), task_events=True)
    d.task_started(uuid="a")
    d.task_started(uuid="b")
    d.set_blocked(True)
    d.task_started(uuid="c")
    assert d.take(10) == [] and d.counts().dropped[DROP_BLOCKED] == 3
    d.set_blocked(False)
    d.task_started(uuid="d")
    assert [e["uuid"] for e in d.take(10)] == ["d"]


def test_sent_and_lost_are_counted():
    d = EventDispatcher(factory(), task_events=True)
    d.sent(5)
    d.lost(2)
    counts = d.counts()
    assert counts.sent == 5 and counts.dropped[DROP_UNSENT] == 2


def test_send_from_many_threads_loses_nothing_below_capacity():
    d = EventDispatcher(factory(), task_events=True, capacity=100_000)
    threads = [threading.Thread(target=lambda: [d.task_started(uuid="x") for _ in range(5_000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = d.take(100_000)
    assert len(events) == 20_000
    assert sorted(e["clock"] for e in events) == list(range(1, 20_001))  # each event its own clock tick


# -- heartbeat ------------------------------------------------------------------------------
def test_heartbeat_schedule():
    now = [100.0]
    beat = HeartbeatSchedule(2.0, clock=lambda: now[0])
    assert beat.due() is True  # the first one goes at once
    assert beat.due() is False
    now[0] = 101.9
    assert beat.due() is False
    now[0] = 102.0
    assert beat.due() is True
    now[0] = 150.0  # after a long stall: one heartbeat, not a burst
    assert beat.due() is True and beat.due() is False
    beat.reset()
    assert beat.due() is True
    assert HeartbeatSchedule(0).due() is False


def test_the_offset_is_looked_up_once_a_minute():
    from amqtask.events.build import CachedOffset

    calls, now = [], [0.0]
    cached = CachedOffset(lambda: calls.append(1) or -1.0, clock=lambda: now[0])
    assert [cached() for _ in range(5)] == [-1.0] * 5 and len(calls) == 1
    now[0] = 61.0
    assert cached() == -1.0 and len(calls) == 2
