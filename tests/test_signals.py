"""amqtask.signals: connect, disconnect, send, weak references, senders; and the
publish signals around a real publish path (the in-memory TestBroker transport)."""
from __future__ import annotations

import gc
import logging

import pytest

from amqtask import App, signals
from amqtask.errors import UnroutableError
from amqtask.signals import Signal
from amqtask.testing import TestBroker
from amqtask.topology.loader import check_text


def make_app(text: str) -> App:
    return App("t", settings=check_text(text).settings, set_as_current=False)


def test_send_calls_receivers_in_order_with_signal_and_sender():
    sig = Signal("s")
    calls = []

    def first(signal=None, sender=None, **kwargs):
        calls.append(("first", signal, sender, kwargs))
        return 1

    def second(**kwargs):
        calls.append(("second",))
        return 2

    sig.connect(first, weak=False)
    sig.connect(second, weak=False)
    assert sig.send(sender="me", x=1) == [(first, 1), (second, 2)]
    assert calls == [("first", sig, "me", {"x": 1}), ("second",)]


def test_connect_as_decorator_with_and_without_arguments():
    sig = Signal("s")
    seen = []

    @sig.connect
    def plain(**kwargs):
        seen.append("plain")

    @sig.connect(sender="only-this", weak=False)
    def filtered(**kwargs):
        seen.append("filtered")

    sig.send(sender="other")
    sig.send(sender="only-this")
    assert seen == ["plain", "plain", "filtered"]


def test_weak_receivers_vanish_with_their_function_strong_ones_stay():
    sig = Signal("s")

    def make(tag, sink):
        def receiver(**kwargs):
            sink.append(tag)
        return receiver

    sink: list[str] = []
    sig.connect(make("weak", sink))  # nothing else holds it
    sig.connect(make("strong", sink), weak=False)
    gc.collect()
    sig.send(sender=None)
    assert sink == ["strong"] and len(sig.receivers) == 1


def test_bound_methods_are_held_weakly_by_their_instance():
    sig = Signal("s")

    class Listener:
        def __init__(self):
            self.seen = 0

        def on(self, **kwargs):
            self.seen += 1

    listener = Listener()
    sig.connect(listener.on)  # a bound method object is temporary; the instance is what counts
    sig.send(sender=None)
    assert listener.seen == 1
    del listener
    gc.collect()
    assert sig.send(sender=None) == []


def test_same_receiver_or_dispatch_uid_connects_once_and_disconnects():
    sig = Signal("s")

    def receiver(**kwargs):
        return "r"

    sig.connect(receiver)
    sig.connect(receiver)
    sig.connect(lambda **kw: "a", dispatch_uid="uid", weak=False)
    sig.connect(lambda **kw: "b", dispatch_uid="uid", weak=False)
    assert [r for _, r in sig.send(sender=None)] == ["r", "a"]
    assert sig.disconnect(receiver) is True and sig.disconnect(receiver) is False
    assert sig.disconnect(dispatch_uid="uid") is True
    assert sig.send(sender=None) == []


def test_a_failing_receiver_is_logged_and_returned_never_raised(caplog):
    sig = Signal("s")

    def boom(**kwargs):
        raise ValueError("receiver bug")

    sig.connect(boom, weak=False)
    sig.connect(lambda **kw: "still called", weak=False)
    with caplog.at_level(logging.ERROR, logger="amqtask.signals"):
        (r1, e1), (r2, v2) = sig.send(sender=None)
    assert isinstance(e1, ValueError) and v2 == "still called"
    assert "receiver bug" in caplog.text


def test_receivers_must_accept_keyword_arguments():
    with pytest.raises(ValueError, match=r"\*\*kwargs"):
        Signal("s").connect(lambda sender: None)
    with pytest.raises(TypeError):
        Signal("s").connect(42)


def test_a_receiver_for_a_task_name_hears_the_task_object():
    app = make_app("{}")
    task = app.task(name="proj.add")(lambda x: x)
    sig = Signal("s")
    heard = []
    sig.connect(lambda sender=None, **kw: heard.append(sender), sender="proj.add", weak=False)
    sig.connect(lambda sender=None, **kw: heard.append(("object", sender)), sender=task, weak=False)
    sig.send(sender=task)
    sig.send(sender=app.task(name="proj.other")(lambda: None))
    assert heard == [task, ("object", task)]


ROUTED = """
exchanges: {tasks: {type: direct}}
queues: {web: {bindings: [{exchange: tasks, routing_key: web}]}}
routes: [{task: proj.add, exchange: tasks, routing_key: web}, {task: proj.lost, exchange: tasks, routing_key: web}]
defaults: {exchange: tasks, routing_key: web}
"""


def test_publish_signals_surround_the_publish_and_may_add_headers():
    app = make_app(ROUTED)
    add = app.task(name="proj.add")(lambda x, y: x + y)
    events = []

    def before(sender=None, body=None, exchange=None, routing_key=None, headers=None, properties=None, **kw):
        events.append(("before", sender, body[:2], exchange, routing_key, properties["correlation_id"]))
        headers["x-trace"] = "abc"

    def after(sender=None, headers=None, exchange=None, routing_key=None, **kw):
        events.append(("after", sender, headers["x-trace"], exchange, routing_key))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    try:
        with TestBroker(app) as broker:
            result = add.delay(2, 3)
            [(wire, _, _, _)] = broker.queues["web"]
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    assert events == [("before", "proj.add", ((2, 3), {}), "tasks", "web", result.id),
                      ("after", "proj.add", "abc", "tasks", "web")]
    assert wire.headers["x-trace"] == "abc" and wire.headers["task"] == "proj.add"


def test_after_task_publish_is_not_sent_when_the_publish_fails():
    app = make_app(ROUTED)
    task = app.task(name="proj.add")(lambda: None)
    before, after = [], []
    on_before = lambda **kw: before.append(kw["routing_key"])  # noqa: E731
    on_after = lambda **kw: after.append(kw)  # noqa: E731
    signals.before_task_publish.connect(on_before, weak=False)
    signals.after_task_publish.connect(on_after, weak=False)
    try:
        with TestBroker(app), pytest.raises(UnroutableError):
            task.apply_async(routing_key="nowhere")
    finally:
        signals.before_task_publish.disconnect(on_before)
        signals.after_task_publish.disconnect(on_after)
    assert before == ["nowhere"] and after == []
