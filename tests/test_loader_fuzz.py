"""routing.yaml shaped like the real thing but with garbage in every slot: the loader
answers with settings or with problems, never with an exception.

Keys come from the loader's own lists, so generated files reach deep into each
section (a queue's bindings, a route's options, the worker's queue lists) where a
value of the wrong type could crash a check. `make fuzz` runs many more examples
with a random seed; every crash found becomes a plain test in test_loader.py.
"""
from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amqtask.topology import loader
from amqtask.topology.loader import check_text

names = st.sampled_from(["tasks", "default", "web", "dead", "x.y", "", "amq.x", "a" * 300])
garbage = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=False, allow_infinity=False),
              names, st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names | st.text(max_size=4), inner,
                                                                         max_size=3)),
    max_leaves=8,
)


def section(keys: tuple[str, ...], value: st.SearchStrategy = garbage) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(keys), value, max_size=len(keys)) | garbage


binding = section(loader.BINDING_KEYS)
queue = st.dictionaries(st.sampled_from(loader.QUEUE_KEYS),
                        garbage | st.lists(binding, max_size=2), max_size=5) | garbage
exchange = st.dictionaries(st.sampled_from(loader.EXCHANGE_KEYS),
                           garbage | st.lists(binding, max_size=2), max_size=4) | garbage
route = st.dictionaries(st.sampled_from(loader.ROUTE_KEYS),
                        garbage | section(loader.TASK_OPTION_NAMES), max_size=4) | garbage
documents = st.fixed_dictionaries({}, optional={
    "broker": st.dictionaries(st.sampled_from(loader.BROKER_KEYS), garbage | section(loader.TLS_KEYS),
                              max_size=4) | garbage,
    "defaults": section(loader.DEFAULTS_KEYS),
    "exchanges": st.dictionaries(names, exchange, max_size=3) | garbage,
    "queues": st.dictionaries(names, queue, max_size=3) | garbage,
    "routes": st.lists(route, max_size=3) | garbage,
    "tasks": st.dictionaries(names, section(loader.TASK_OPTION_NAMES), max_size=2) | garbage,
    "worker": section(loader.WORKER_KEYS),
    "results": section(loader.RESULTS_KEYS),
})


@settings(max_examples=max(300, settings().max_examples), suppress_health_check=list(HealthCheck))
@given(documents)
def test_loader_never_crashes_on_a_garbled_routing_yaml(document):
    text = yaml.safe_dump(document, allow_unicode=True)
    result = check_text(text, source="fuzz.yaml", environ={})
    assert result.settings is not None or result.errors
