"""`amqtask graph`: every exchange, queue, binding, route and dead-letter path of
routing.yaml is in the picture, and the Mermaid and DOT sources are well formed."""
from __future__ import annotations

import re

import pydot
import pytest
from click.testing import CliRunner

from amqtask.cli import main
from amqtask.deadletters import dead_letter_queues
from amqtask.graph import Graph, render, to_dot, to_mermaid, topology_graph
from amqtask.topology.loader import check_text, load_settings

from .conftest import ROOT

NODE = re.compile(r'^  (?P<id>[a-z]\d+)(?P<open>\{\{"|\[\("|\(\["|\[\[")(?P<text>[^"]*)'
                  r'(?P<close>"\}\}|"\)\]|"\]\)|"\]\])$')
EDGE = re.compile(r'^  (?P<src>[a-z]\d+) (?P<arrow>-->|==>|-\.->)(?:\|"(?P<label>[^"]*)"\|)? (?P<dst>[a-z]\d+)$')
STYLE = re.compile(r"^  (classDef [a-z]+ [a-z:#0-9,]+|class [a-z0-9,]+ [a-z]+)$")
PAIRS = {'{{"': '"}}', '[("': '")]', '(["': '"])', '[["': '"]]'}


@pytest.fixture(scope="module")
def settings():
    return load_settings(ROOT / "routing.yaml", environ={})


def parse_mermaid(text: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The subset of Mermaid's flowchart syntax `to_mermaid` writes, checked line by
    line: node id -> label text, and edges (source, label, target)."""
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, str] = {}
    edges = []
    for line in lines[1:]:
        if match := NODE.match(line):
            assert PAIRS[match["open"]] == match["close"], line
            assert match["id"] not in nodes, f"duplicate id: {line}"
            nodes[match["id"]] = match["text"]
        elif match := EDGE.match(line):
            assert match["src"] in nodes and match["dst"] in nodes, f"edge before its nodes: {line}"
            edges.append((match["src"], match["label"] or "", match["dst"]))
        else:
            assert STYLE.match(line), f"not Mermaid this renderer writes: {line!r}"
    for text in [*nodes.values(), *(label for _, label, _ in edges)]:
        # Entity codes only: a raw #, quote, < or > would end or confuse the label.
        assert not re.search(r'#(?!\d+;)|[<>](?!br/>)|(?<!<br/)>', text.replace("<br/>", "")), text
    return nodes, edges


def unescape(text: str) -> str:
    return re.sub(r"#(\d+);", lambda m: chr(int(m[1])), text)


def by_name(nodes: dict[str, str]) -> dict[str, str]:
    """first label line -> node id"""
    return {unescape(text.split("<br/>")[0]): node_id for node_id, text in nodes.items()}


def test_mermaid_has_every_exchange_queue_binding_and_route(settings):
    nodes, edges = parse_mermaid(render(settings, "mermaid"))
    ids = by_name(nodes)
    topology = settings.topology
    for name, exchange in topology.exchanges.items():
        assert exchange.type in unescape(nodes[ids[name]]), name
    assert set(topology.queues) <= set(ids)
    labelled = {(src, unescape(label), dst) for src, label, dst in edges}
    for b in topology.bindings:
        label = b.routing_key if not b.arguments else "all: format=pdf"
        assert (ids[b.source], label, ids[b.destination]) in labelled, b
    for rule in settings.routes:
        assert rule.pattern in ids
        assert any(src == ids[rule.pattern] for src, _, _ in edges), rule.pattern
    assert (ids["projq.maintenance.vacuum"], "default exchange", ids["maintenance"]) in labelled
    assert (ids["projq.reports.pdf"], "format=pdf", ids["reports"]) in labelled
    assert (ids["projq.notify.*"], "", ids["broadcast"]) in labelled  # fanout: no key
    assert (ids["(any other task)"], "task.default", ids["tasks"]) in labelled


def test_dead_letter_alternate_and_delay_paths(settings):
    nodes, edges = parse_mermaid(render(settings, "mermaid"))
    ids = by_name(nodes)
    labelled = {(src, unescape(label), dst) for src, label, dst in edges}
    assert (ids["invoices"], "dead letters: invoices", ids["dead"]) in labelled
    assert (ids["billing"], "unroutable", ids["billing.unrouted"]) in labelled
    for name, queue in settings.topology.queues.items():
        if queue.queue_type == "stream" or queue.dead_letter_exchange:
            continue
        [dead] = dead_letter_queues(settings.topology, name)
        assert (ids[name], "dead letters", ids[dead]) in labelled
    assert "event_stream.dead" not in ids  # a stream never dead-letters


def test_each_queue_parks_in_the_cascade_of_its_type_and_comes_back_from_it(settings):
    """invoices is a quorum queue: its countdowns wait in amqtask.delay.q.* and come
    back through amqtask.delay.q.deliver; every other queue uses the classic cascade.
    Each return edge carries the binding key the worker declares."""
    nodes, edges = parse_mermaid(render(settings, "mermaid"))
    ids = by_name(nodes)
    labelled = {(src, unescape(label), dst) for src, label, dst in edges}
    classic = next(i for text, i in ids.items() if text.startswith("amqtask.delay.31"))
    quorum = next(i for text, i in ids.items() if text.startswith("amqtask.delay.q.31"))
    for prefix, parked in (("amqtask.delay", classic), ("amqtask.delay.q", quorum)):
        assert (parked, "when due", ids[f"{prefix}.deliver"]) in labelled
        assert (ids[f"{prefix}.deliver"], "unroutable", ids[f"{prefix}.lost"]) in labelled
    assert "quorum" in unescape(nodes[quorum]) and "quorum" in unescape(nodes[ids["amqtask.delay.q.lost"]])
    for name, queue in settings.topology.queues.items():
        prefix, parked = ("amqtask.delay.q", quorum) if queue.queue_type == "quorum" else ("amqtask.delay", classic)
        other = "amqtask.delay" if prefix == "amqtask.delay.q" else "amqtask.delay.q"
        assert (ids[name], "countdown, eta, retries", parked) in labelled, name
        assert (ids[f"{prefix}.deliver"], f"#.{name}", ids[name]) in labelled, name
        assert not any(src == ids[f"{other}.deliver"] and dst == ids[name] for src, _, dst in labelled), name
    assert (ids["invoices"], "countdown, eta, retries", quorum) in labelled


def test_only_the_queues_a_worker_consumes_get_delay_paths_and_only_the_cascades_they_use():
    settings = check_text("""\
exchanges:
  x: {type: direct}
queues:
  jobs: {queue_type: quorum, bindings: [{exchange: x, routing_key: j}]}
  'odd.name*': {queue_type: quorum, bindings: [{exchange: x, routing_key: o}]}
  ignored: {bindings: [{exchange: x, routing_key: i}]}
defaults: {exchange: x, routing_key: j}
worker: {exclude_queues: [ignored]}
""", environ={}).settings
    assert settings is not None
    nodes, edges = parse_mermaid(render(settings, "mermaid"))
    ids = by_name(nodes)
    labelled = {(src, unescape(label), dst) for src, label, dst in edges}
    assert "amqtask.delay.deliver" not in ids and not any(t.startswith("amqtask.delay.31") for t in ids)
    assert (ids["amqtask.delay.q.deliver"], "#.jobs", ids["jobs"]) in labelled
    assert (ids["amqtask.delay.q.deliver"], "#.odd%2Ename%2A", ids["odd.name*"]) in labelled
    assert not any(dst == ids["ignored"] and src == ids["amqtask.delay.q.deliver"] for src, _, dst in labelled)


def test_dot_parses_and_matches_the_graph(settings):
    graph: Graph = topology_graph(settings)
    [parsed] = pydot.graph_from_dot_data(to_dot(graph))
    assert {n.get_name() for n in parsed.get_nodes()} >= {n.id for n in graph.nodes}
    assert len(parsed.get_edges()) == len(graph.edges)
    tasks = next(n for n in parsed.get_nodes() if n.get_name() == "x1")
    assert tasks.get_label() == '"tasks\\ntopic"' and tasks.get_shape() == "hexagon"


def test_names_that_need_escaping_stay_inside_their_labels():
    text = '''\
exchanges:
  'odd"x<y>#': {type: topic}
queues:
  'q|1&2;':
    bindings: [{exchange: 'odd"x<y>#', routing_key: "a.#"}]
routes:
  - {task: 're:a\\.(b|c)"', exchange: 'odd"x<y>#', routing_key: a.b}
defaults: {exchange: 'odd"x<y>#', routing_key: a.z}
'''
    settings = check_text(text, environ={}).settings
    assert settings is not None
    nodes, _ = parse_mermaid(to_mermaid(topology_graph(settings)))
    names = set(by_name(nodes))
    assert {'odd"x<y>#', "q|1&2;", 're:a\\.(b|c)"'} <= names
    [parsed] = pydot.graph_from_dot_data(render(settings, "dot"))
    assert any('odd\\"x<y>#' in (n.get_label() or "") for n in parsed.get_nodes())


def test_readme_shows_the_current_picture_of_routing_yaml(settings):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", readme, re.DOTALL)
    assert block, "README has no mermaid block"
    assert block[1] == render(settings, "mermaid"), "README's graph is stale: paste `amqtask graph` into it"


def test_graph_command(example_config):
    runner = CliRunner()
    mermaid = runner.invoke(main, ["graph", "--config", str(example_config)])
    assert mermaid.exit_code == 0 and mermaid.output.startswith("flowchart LR\n")
    dot = runner.invoke(main, ["graph", "--format", "dot", "--config", str(example_config)])
    assert dot.exit_code == 0 and dot.output.startswith("digraph amqtask {")
    bad = runner.invoke(main, ["graph", "--format", "png", "--config", str(example_config)])
    assert bad.exit_code == 2
