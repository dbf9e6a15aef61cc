"""Generated Celery configurations: the translation always passes `amqtask check`, and
every task name goes where Celery's own publish sends it, or (only when Celery's
message would reach no queue at all) the report says so."""
from __future__ import annotations

import os
import warnings

from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Exchange, Queue

from amqtask.celery_import import translate
from amqtask.celery_import.source import CeleryConfig
from amqtask.router import Router
from tests.celery_oracle import celery_destination

# One type per exchange name: a name declared with two types is refused by RabbitMQ
# itself (tested separately), so the generator does not mix them.
EXCHANGES = {"direct_x": "direct", "topic_x": "topic", "fan_x": "fanout"}
QUEUES = ["q1", "q2", "q3", "celery"]
BINDING_KEYS = ["a", "a.b", "a.*", "a.#", "#", "*.b", ""]
PUBLISH_KEYS = ["a", "a.b", "a.c", "z"]
TASKS = ["t.a", "t.b", "u.c", "v.d.e", "w"]
PROFILE = settings(derandomize=os.environ.get("CI") == "true", max_examples=120, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


@st.composite
def celery_settings(draw):
    exchange_names = st.one_of(st.none(), st.sampled_from(sorted(EXCHANGES)))
    queue_specs = draw(st.lists(st.tuples(st.sampled_from(QUEUES), exchange_names, st.sampled_from(BINDING_KEYS)),
                                max_size=4, unique_by=lambda spec: spec[0]))
    queues = [Queue(name, Exchange(ex, EXCHANGES[ex]) if ex else None, routing_key=key)
              for name, ex, key in queue_specs]
    route_value = st.one_of(
        st.sampled_from(QUEUES),
        st.builds(lambda q: {"queue": q}, st.sampled_from(QUEUES)),
        st.builds(lambda q, k: {"queue": q, "routing_key": k}, st.sampled_from(QUEUES), st.sampled_from(PUBLISH_KEYS)),
        st.builds(lambda x, k: {"exchange": x, "routing_key": k}, st.sampled_from(sorted(EXCHANGES)),
                  st.sampled_from(PUBLISH_KEYS)),
        st.builds(lambda k: {"routing_key": k}, st.sampled_from(PUBLISH_KEYS)),
    )
    patterns = st.sampled_from(TASKS + ["t.*", "*", "v.*.e"])
    routes = draw(st.lists(st.dictionaries(patterns, route_value, max_size=4), max_size=2))
    config = {"task_queues": queues, "task_routes": routes,
              "task_default_queue": draw(st.sampled_from(QUEUES)),
              "task_default_exchange": "dflt", "task_default_exchange_type": draw(st.sampled_from(["direct", "topic"]))}
    if draw(st.booleans()):
        config["task_default_routing_key"] = draw(st.sampled_from(PUBLISH_KEYS))
    return config


def check_agrees(config):
    translation = translate(CeleryConfig("generated", config), task_names=TASKS)  # raises if check refuses it
    app = Celery("oracle", set_as_current=False, broker="memory://")
    app.conf.update(config)
    router = Router(translation.settings)
    topology = translation.settings.topology
    problems = "\n".join(translation.report.problems)
    assert "routes differ" not in problems, problems
    for name in TASKS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exchange, key = celery_destination(app, name)
        ours = router.route(name)
        if (ours.exchange, ours.routing_key) == (exchange, key):
            continue
        theirs = topology.route(exchange, key)
        if theirs:
            assert topology.route(ours.exchange, ours.routing_key) == theirs, (name, exchange, key, ours)
        else:
            assert name in problems, (name, exchange, key, problems)


@PROFILE
@given(celery_settings())
def test_generated_configurations_route_as_celery(config):
    check_agrees(config)


def test_found_wildcard_key_reaching_two_queues():
    """Found by the generator: Celery publishes t.a with q2's binding pattern 'a.*' as a
    literal key on a topic exchange, which q1's '#' receives too. A key no binding
    uses stands in for the wildcard and reaches the same two queues."""
    check_agrees({"task_queues": [Queue("q1", routing_key="#"), Queue("q2", routing_key="a.*")],
                  "task_routes": [{"t.a": "q2"}], "task_default_queue": "q1",
                  "task_default_exchange": "dflt", "task_default_exchange_type": "topic"})
