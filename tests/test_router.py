"""Routing decisions and option precedence: call > decorator > routing.yaml > defaults."""
import datetime as dt
import json

import pytest

from amqtask import App
from amqtask.errors import RoutingError
from amqtask.publisher import CallOptions
from amqtask.router import Router
from amqtask.topology.loader import load_settings


@pytest.fixture
def settings(example_config):
    return load_settings(example_config, environ={})


def test_first_matching_rule_wins(settings, tmp_path):
    router = Router(settings)
    assert router.route("projq.tasks.add").routing_key == "web.add"
    assert router.route("projq.web.anything").routing_key == "web.misc"
    assert router.route("projq.billing.invoice").exchange == "billing"
    assert router.route("projq.billing.other").routing_key == "task.default"  # regex is a full match
    assert router.route("unrouted.task").routing_key == "task.default"


def test_explain_names_rule_line_and_queues(settings):
    decision = Router(settings).explain("projq.events.signup")
    assert decision.rule.line == 89 and decision.queues == {"events_log", "event_stream"}
    text = decision.explain()
    assert "line 89" in text and "events_log" in text


def test_options_yaml_tasks_over_route_options(settings):
    router = Router(settings)
    assert router.options_for("projq.billing.refund").max_retries == 5
    assert router.options_for("projq.tasks.add").priority == 5


def test_precedence_call_over_decorator_over_yaml(settings):
    app = App("t", settings=settings)

    @app.task(name="projq.tasks.add", priority=7, time_limit=10)
    def add(x, y):
        return x + y

    pub = app.publisher
    dest, wire, _ = pub.prepare(add.name, (1, 2), task_options=add.options)
    assert wire.priority == 7  # decorator beats routing.yaml's 5
    assert wire.headers["timelimit"] == [10, 25]  # hard from decorator, soft from routing.yaml
    dest, wire, _ = pub.prepare(add.name, (1, 2), call=CallOptions(priority=9, routing_key="web.other"),
                                task_options=add.options)
    assert wire.priority == 9 and dest.routing_key == "web.other" and dest.exchange == "tasks"
    dest, wire, _ = pub.prepare("projq.maintenance.vacuum")
    assert (dest.exchange, dest.routing_key, wire.priority) == ("", "maintenance", 0)


def test_call_options(settings):
    pub = App("t", settings=settings).publisher
    dest, wire, task_id = pub.prepare("x", call=CallOptions(queue="audit", countdown=60, expires=120,
                                                             task_id="fixed", serializer="msgpack"))
    assert (dest.exchange, dest.routing_key, task_id) == ("", "audit", "fixed")
    eta = dt.datetime.fromisoformat(wire.headers["eta"])
    expires = dt.datetime.fromisoformat(wire.headers["expires"])
    assert 59 <= (expires - eta).total_seconds() <= 61
    assert wire.content_type == "application/x-msgpack"
    with pytest.raises(RoutingError):
        pub.prepare("x", call=CallOptions(queue="nope"))
    with pytest.raises(RoutingError):
        pub.prepare("x", call=CallOptions(exchange="undeclared"))


def test_headers_route_puts_routing_headers_on_the_message(settings):
    _, wire, _ = App("t", settings=settings).publisher.prepare("projq.reports.pdf", (1,))
    assert wire.headers["format"] == "pdf" and wire.headers["task"] == "projq.reports.pdf"
    assert json.loads(wire.body)[0] == [1]


def test_task_registration_and_local_call(settings):
    app = App("t", settings=settings)

    @app.task
    def plain(x):
        return x * 2

    @app.task(name="bound", bind=True)
    def bound(self, x):
        return (self.name, x)

    assert plain(2) == 4 and bound(1) == ("bound", 1)
    assert plain.name.endswith("plain") and set(app.tasks) == {plain.name, "bound"}
    with pytest.raises(TypeError):
        app.task(name="x", no_such_option=1)
    with pytest.raises(TypeError):
        plain.apply_async((1,), bogus=True)
