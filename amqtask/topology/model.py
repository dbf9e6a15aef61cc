"""Declarations of the AMQP world as frozen data, and RabbitMQ's routing rules over it.

Nothing here does I/O: a Topology is what routing.yaml says, and `Topology.route`
answers "which queues would RabbitMQ put this message in?" the way the broker does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")
DEFAULT_EXCHANGE = ""


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Exchange:
    name: str
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    alternate_exchange: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def declare_arguments(self) -> dict[str, Any]:
        args = dict(self.arguments)
        if self.alternate_exchange is not None:
            args["alternate-exchange"] = self.alternate_exchange
        return args


@dataclass(frozen=True)
class Queue:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)

    @property
    def queue_type(self) -> str:
        return str(self.arguments.get("x-queue-type", "classic"))

    @property
    def dead_letter_exchange(self) -> str | None:
        value = self.arguments.get("x-dead-letter-exchange")
        return None if value is None else str(value)


@dataclass(frozen=True)
class Binding:
    """`source` exchange delivers to `destination` (a queue, or an exchange when
    `to_exchange` is true) when `routing_key`/`arguments` match."""

    source: str
    destination: str
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    to_exchange: bool = False


def split_topic_words(key: str) -> list[str]:
    """Split a routing key or binding pattern into words as RabbitMQ does: the empty
    key has no words, while "a." has two ("a" and "")."""
    return key.split(".") if key else []


def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when a topic binding `pattern` matches `routing_key`.

    `*` matches exactly one word (possibly empty), `#` zero or more words. Runs as a
    set-of-positions automaton, so it is linear in len(pattern) * len(key) and never
    backtracks exponentially on patterns like "#.#.#.#.x".
    """
    words = split_topic_words(pattern)
    key = split_topic_words(routing_key)
    # states: indexes into `words` reachable after consuming some prefix of `key`
    states = _close_hashes(words, {0})
    for word in key:
        following: set[int] = set()
        for i in states:
            if i == len(words):
                continue
            w = words[i]
            if w == "#":
                following.add(i)  # '#' swallows this word and stays
            elif w == "*" or w == word:
                following.add(i + 1)
        if not following:
            return False
        states = _close_hashes(words, following)
    return len(words) in states


def _close_hashes(words: list[str], states: set[int]) -> set[int]:
    """Add the positions reachable by letting each '#' match zero words."""
    closed = set(states)
    pending = list(states)
    while pending:
        i = pending.pop()
        if i < len(words) and words[i] == "#" and i + 1 not in closed:
            closed.add(i + 1)
            pending.append(i + 1)
    return closed


def headers_match(binding_args: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool:
    """A headers-exchange binding: `x-match` all (default) or any; keys starting with
    `x-` are not matched (the `-with-x` variants of RabbitMQ 3.10 include them)."""
    headers = headers or {}
    mode = str(binding_args.get("x-match", "all"))
    include_x = mode.endswith("-with-x")
    wanted = {
        k: v for k, v in binding_args.items() if k != "x-match" and (include_x or not k.startswith("x-"))
    }
    hits = (k in headers and _header_equal(headers[k], v) for k, v in wanted.items())
    if mode.startswith("any"):
        return any(hits)
    return all(hits)


def _header_equal(got: Any, want: Any) -> bool:
    # RabbitMQ compares type and value: the integer 1 is not the string "1", nor True.
    return type(got) is type(want) and got == want


@dataclass(frozen=True)
class Topology:
    exchanges: Mapping[str, Exchange] = field(default_factory=dict)
    queues: Mapping[str, Queue] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()

    @classmethod
    def build(
        cls, exchanges: Iterable[Exchange], queues: Iterable[Queue], bindings: Iterable[Binding]
    ) -> "Topology":
        return cls(
            exchanges=_frozen({x.name: x for x in exchanges}),
            queues=_frozen({q.name: q for q in queues}),
            bindings=tuple(bindings),
        )

    def bindings_from(self, exchange: str) -> list[Binding]:
        return [b for b in self.bindings if b.source == exchange]

    def bindings_to_queue(self, queue: str) -> list[Binding]:
        return [b for b in self.bindings if not b.to_exchange and b.destination == queue]

    def route(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None
    ) -> frozenset[str]:
        """The queues RabbitMQ would deliver a message to.

        Follows exchange-to-exchange bindings once per exchange (a cycle cannot loop),
        and an exchange's alternate exchange when its own bindings match nothing.
        An exchange the topology does not declare routes nowhere.
        """
        if exchange == DEFAULT_EXCHANGE:
            return frozenset({routing_key}) if routing_key in self.queues else frozenset()
        queues: set[str] = set()
        seen: set[str] = set()
        pending = [exchange]
        while pending:
            name = pending.pop()
            if name in seen or name not in self.exchanges:
                continue
            seen.add(name)
            matched = self._matching_bindings(self.exchanges[name], routing_key, headers)
            if not matched and self.exchanges[name].alternate_exchange:
                pending.append(self.exchanges[name].alternate_exchange or "")
            for binding in matched:
                if binding.to_exchange:
                    pending.append(binding.destination)
                elif binding.destination in self.queues:
                    queues.add(binding.destination)
        return frozenset(queues)

    def _matching_bindings(
        self, exchange: Exchange, routing_key: str, headers: Mapping[str, Any] | None
    ) -> list[Binding]:
        return [
            b for b in self.bindings_from(exchange.name) if binding_matches(exchange.type, b, routing_key, headers)
        ]

    def reachable_queues(self) -> frozenset[str]:
        """Queues that at least one exchange can deliver to (the default exchange
        reaches every queue by name, but only deliberate bindings count here)."""
        reachable: set[str] = set()
        for b in self.bindings:
            if not b.to_exchange:
                reachable.add(b.destination)
        return frozenset(reachable)


def binding_matches(
    exchange_type: str, binding: Binding, routing_key: str, headers: Mapping[str, Any] | None
) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding.routing_key == routing_key
    if exchange_type == "topic":
        return topic_matches(binding.routing_key, routing_key)
    if exchange_type == "headers":
        return headers_match(binding.arguments, headers)
    return False
