"""routing.yaml as a picture: exchanges, queues, bindings with their keys, the routes
from task names, dead-letter paths and the delay cascades (the classic one, and the
quorum one that quorum queues use) with each queue's way in and back, as Mermaid or
Graphviz DOT source. Pure: nothing here talks to a broker.

The picture is first built as a small neutral graph (nodes and edges with a kind),
then written out by one renderer per format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .deadletters import DEAD_SUFFIX, dead_letter_queues
from .router import Destination, destination_for_rule
from .settings import Settings
from .topology.model import DEFAULT_EXCHANGE, Binding, Topology
from .worker import delays

FORMATS = ("mermaid", "dot")
# Node kinds: exchange, queue, dead (a dead-letter queue workers declare), task, delay.
# Edge kinds: binding, route, alternate, dead-letter, delay.


@dataclass(frozen=True)
class Node:
    id: str
    lines: tuple[str, ...]  # the label, one entry per line
    kind: str


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str
    kind: str


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], Node] = {}
        self.edges: list[Edge] = []

    def node(self, kind: str, name: str, *extra: str) -> str:
        key = (kind, name)
        if key not in self.nodes:
            prefix = {"exchange": "x", "queue": "q", "dead": "q", "task": "t", "delay": "d"}[kind]
            self.nodes[key] = Node(f"{prefix}{len(self.nodes) + 1}", (name, *extra), kind)
        return self.nodes[key].id

    def edge(self, source: str, target: str, label: str = "", kind: str = "binding") -> None:
        self.edges.append(Edge(source, target, label, kind))

    def graph(self) -> Graph:
        return Graph(tuple(self.nodes.values()), tuple(self.edges))


def topology_graph(settings: Settings) -> Graph:
    """Every exchange, queue, binding, route, dead-letter path, and each worked
    queue's delay path."""
    topology = settings.topology
    b = _Builder()
    for x in topology.exchanges.values():
        b.node("exchange", x.name, x.type + (", internal" if x.internal else ""))
    for q in topology.queues.values():
        b.node("queue", q.name, *_queue_notes(q.arguments))
    _routes(b, settings)
    for binding in topology.bindings:
        kind = "exchange" if binding.to_exchange else "queue"
        b.edge(b.node("exchange", binding.source), b.node(kind, binding.destination), _binding_label(binding))
    for x in topology.exchanges.values():
        if x.alternate_exchange:
            b.edge(b.node("exchange", x.name), b.node("exchange", x.alternate_exchange), "unroutable", "alternate")
    _dead_letters(b, topology)
    _delays(b, settings)
    return b.graph()


def _queue_notes(arguments: Mapping[str, Any]) -> tuple[str, ...]:
    notes = []
    if arguments.get("x-queue-type", "classic") != "classic":
        notes.append(str(arguments["x-queue-type"]))
    if "x-max-priority" in arguments:
        notes.append(f"priority 0-{arguments['x-max-priority']}")
    return (", ".join(notes),) if notes else ()


def _binding_label(binding: Binding) -> str:
    if binding.arguments:
        match = binding.arguments.get("x-match", "all")
        pairs = ", ".join(f"{k}={v}" for k, v in binding.arguments.items() if k != "x-match")
        return f"{match}: {pairs}" if pairs else str(match)
    return binding.routing_key


def _routes(b: _Builder, settings: Settings) -> None:
    rules = [(rule.pattern, destination_for_rule(rule, settings.defaults)) for rule in settings.routes]
    defaults = settings.defaults
    rules.append(("(any other task)", Destination(defaults.exchange, defaults.routing_key)))
    for pattern, dest in rules:
        task = b.node("task", pattern)
        exchange = settings.topology.exchanges.get(dest.exchange)
        label = dest.routing_key
        if exchange is not None and exchange.type == "headers":
            label = ", ".join(f"{k}={v}" for k, v in dest.headers.items())
        elif exchange is not None and exchange.type == "fanout":
            label = ""  # a fanout exchange ignores the routing key
        if dest.exchange == DEFAULT_EXCHANGE:
            # The default exchange delivers by queue name: draw the queue it reaches.
            if dest.routing_key in settings.topology.queues:
                b.edge(task, b.node("queue", dest.routing_key), "default exchange", "route")
        else:
            b.edge(task, b.node("exchange", dest.exchange), label, "route")


def _dead_letters(b: _Builder, topology: Topology) -> None:
    for q in topology.queues.values():
        if q.queue_type == "stream":
            continue  # a stream keeps every message; nothing is dead-lettered from it
        source = b.node("queue", q.name)
        dlx = q.dead_letter_exchange
        if dlx is not None and dlx in topology.exchanges:
            key = q.arguments.get("x-dead-letter-routing-key")
            b.edge(source, b.node("exchange", dlx), "dead letters" + (f": {key}" if key else ""), "dead-letter")
            continue
        for dead in dead_letter_queues(topology, q.name):
            kind = "dead" if dead == q.name + DEAD_SUFFIX and dead not in topology.queues else "queue"
            b.edge(source, b.node(kind, dead), "dead letters", "dead-letter")


def _delays(b: _Builder, settings: Settings) -> None:
    """countdown, eta, retries and rate limits: each queue a worker consumes by default
    parks its messages in the cascade of its own type (quorum queues in the quorum
    one) and gets them back through that cascade's deliver exchange, bound with the
    queue's name as the last word of the key (as the worker declares it)."""
    drawn: dict[str, tuple[str, str]] = {}  # cascade prefix -> its node ids
    for name in worked_queues(settings):
        cascade = delays.cascade_for(name, settings.topology)
        if cascade.prefix not in drawn:
            drawn[cascade.prefix] = _cascade(b, cascade)
        parked, deliver = drawn[cascade.prefix]
        queue = b.node("queue", name)
        b.edge(queue, parked, "countdown, eta, retries", "delay")
        b.edge(deliver, queue, cascade.delivery_binding(name).routing_key, "delay")


def _cascade(b: _Builder, cascade: delays.Cascade) -> tuple[str, str]:
    """The cascade's TTL queues (one node) and its deliver exchange: (their node ids)."""
    kind = cascade.arguments.get("x-queue-type", "classic")
    parked = b.node("delay", f"{cascade.level_name(delays.LEVELS - 1)} ... {cascade.level_name(0)[-2:]}",
                    f"{delays.LEVELS} {kind} TTL queues, one per bit of the delay")
    deliver = b.node("exchange", cascade.deliver, "topic")
    b.edge(parked, deliver, "when due", "delay")
    b.edge(deliver, b.node("queue", cascade.lost, *(() if kind == "classic" else (kind,))), "unroutable",
           "alternate")
    return parked, deliver


def worked_queues(settings: Settings) -> list[str]:
    """The queues `amqtask worker` consumes without -Q: worker.queues, else every
    queue of routing.yaml, without worker.exclude_queues."""
    chosen = list(settings.worker.queues) or list(settings.topology.queues)
    excluded = set(settings.worker.exclude_queues)
    return [name for name in chosen if name not in excluded]


# -- Mermaid -------------------------------------------------------------------------
_MERMAID_SHAPES = {"exchange": ('{{"', '"}}'), "queue": ('[("', '")]'), "dead": ('[("', '")]'),
                   "task": ('(["', '"])'), "delay": ('[["', '"]]')}
_MERMAID_ARROWS = {"binding": "-->", "route": "==>", "alternate": "-.->", "dead-letter": "-.->", "delay": "-.->"}
_MERMAID_CLASSES = {
    "exchange": "fill:#fff3d6,stroke:#c08a00",
    "queue": "fill:#e3efff,stroke:#2f6db5",
    "dead": "fill:#fde2e1,stroke:#b3261e",
    "task": "fill:#eaf7e6,stroke:#2e7d32",
    "delay": "fill:#f1e9fb,stroke:#6a3fa0",
}


def mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label: entity codes for what the parser reads."""
    out = []
    for ch in text:
        if ch in '"#<>|&;' or ord(ch) < 32:
            out.append(f"#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart LR"]
    for node in graph.nodes:
        start, end = _MERMAID_SHAPES[node.kind]
        lines.append(f"  {node.id}{start}{'<br/>'.join(mermaid_text(line) for line in node.lines)}{end}")
    for edge in graph.edges:
        arrow = _MERMAID_ARROWS[edge.kind]
        label = f'|"{mermaid_text(edge.label)}"|' if edge.label else ""
        lines.append(f"  {edge.source} {arrow}{label} {edge.target}")
    for kind, style in _MERMAID_CLASSES.items():
        members = [n.id for n in graph.nodes if n.kind == kind]
        if members:
            lines.append(f"  classDef {kind} {style}")
            lines.append(f"  class {','.join(members)} {kind}")
    return "\n".join(lines) + "\n"


# -- Graphviz DOT --------------------------------------------------------------------
_DOT_SHAPES = {"exchange": 'shape=hexagon, style=filled, fillcolor="#fff3d6"',
               "queue": 'shape=cylinder, style=filled, fillcolor="#e3efff"',
               "dead": 'shape=cylinder, style=filled, fillcolor="#fde2e1"',
               "task": 'shape=box, style="rounded,filled", fillcolor="#eaf7e6"',
               "delay": 'shape=box3d, style=filled, fillcolor="#f1e9fb"'}
_DOT_EDGES = {"binding": "", "route": "penwidth=2", "alternate": "style=dashed", "dead-letter": "style=dashed, "
              'color="#b3261e"', "delay": 'style=dotted, color="#6a3fa0"'}


def dot_text(text: str) -> str:
    """Text inside a double-quoted DOT string."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(graph: Graph) -> str:
    lines = ["digraph amqtask {", "  rankdir=LR;", '  node [fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    for node in graph.nodes:
        label = "\\n".join(dot_text(line) for line in node.lines)
        lines.append(f'  {node.id} [label="{label}", {_DOT_SHAPES[node.kind]}];')
    for edge in graph.edges:
        attributes = [f'label="{dot_text(edge.label)}"'] if edge.label else []
        attributes += [_DOT_EDGES[edge.kind]] if _DOT_EDGES[edge.kind] else []
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"  {edge.source} -> {edge.target}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(settings: Settings, fmt: str = "mermaid") -> str:
    graph = topology_graph(settings)
    return to_dot(graph) if fmt == "dot" else to_mermaid(graph)
