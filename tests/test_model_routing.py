"""Topology.route follows RabbitMQ: exchange types, the default exchange, e2e chains, AEs."""
from amqtask.topology.model import Binding, Exchange, Queue, Topology, headers_match


def topo(exchanges, queues, bindings):
    return Topology.build(exchanges, [Queue(q) for q in queues], bindings)


def test_direct_fanout_topic():
    t = topo(
        [Exchange("d", "direct"), Exchange("f", "fanout"), Exchange("t", "topic")],
        ["q1", "q2", "q3"],
        [Binding("d", "q1", "k"), Binding("f", "q2", "ignored"), Binding("f", "q3"), Binding("t", "q3", "a.*")],
    )
    assert t.route("d", "k") == {"q1"}
    assert t.route("d", "K") == set()
    assert t.route("f", "whatever") == {"q2", "q3"}
    assert t.route("t", "a.b") == {"q3"}
    assert t.route("t", "a") == set()
    assert t.route("nope", "k") == set()


def test_default_exchange_routes_by_queue_name():
    t = topo([], ["jobs"], [])
    assert t.route("", "jobs") == {"jobs"}
    assert t.route("", "missing") == set()


def test_headers_all_any_and_x_keys():
    assert headers_match({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 0})
    assert not headers_match({"x-match": "all", "a": 1, "b": "x"}, {"a": 1})
    assert headers_match({"x-match": "any", "a": 1, "b": "x"}, {"b": "x"})
    assert not headers_match({"x-match": "any", "a": 1}, {})
    assert headers_match({"x-match": "all", "x-ignored": 1}, {})
    assert not headers_match({"x-match": "all", "a": 1}, {"a": "1"})  # type matters
    assert headers_match({}, {"anything": 1})  # all of nothing
    assert not headers_match({"x-match": "all-with-x", "x-k": 1}, {})
    t = topo([Exchange("h", "headers")], ["pdf"], [Binding("h", "pdf", arguments={"format": "pdf"})])
    assert t.route("h", "", {"format": "pdf"}) == {"pdf"}
    assert t.route("h", "", {"format": "png"}) == set()


def test_exchange_to_exchange_chains_and_cycles():
    t = topo(
        [Exchange("a", "topic"), Exchange("b", "fanout"), Exchange("c", "direct")],
        ["qb", "qc"],
        [
            Binding("a", "b", "x.#", to_exchange=True),
            Binding("b", "c", to_exchange=True),
            Binding("c", "a", "x.y", to_exchange=True),  # a cycle back to a
            Binding("b", "qb"),
            Binding("c", "qc", "x.y"),
        ],
    )
    assert t.route("a", "x.y") == {"qb", "qc"}
    assert t.route("a", "x.z") == {"qb"}
    assert t.route("a", "y") == set()


def test_alternate_exchange_only_when_own_bindings_match_nothing():
    t = topo(
        [Exchange("main", "direct", alternate_exchange="ae"), Exchange("ae", "fanout"), Exchange("empty", "fanout")],
        ["hit", "lost"],
        [Binding("main", "hit", "k"), Binding("ae", "lost"), Binding("main", "empty", "e", to_exchange=True)],
    )
    assert t.route("main", "k") == {"hit"}
    assert t.route("main", "other") == {"lost"}
    # matched an exchange that routes nowhere: the AE is not consulted, as in RabbitMQ
    assert t.route("main", "e") == set()
