"""Task name -> Destination, following routing.yaml's rules; and why."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import RoutingError
from .settings import Defaults, RouteRule, Settings, TaskOptions
from .topology.model import DEFAULT_EXCHANGE


@dataclass(frozen=True)
class Destination:
    exchange: str
    routing_key: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    priority: int | None = None


@dataclass(frozen=True)
class Decision:
    """A routing decision with its reasons, for `amqtask route NAME`."""

    task_name: str
    destination: Destination
    rule: RouteRule | None  # None: no rule matched, the defaults apply
    queues: frozenset[str]
    options: TaskOptions

    def explain(self) -> str:
        d = self.destination
        if self.rule is None:
            how = "no route matched; using 'defaults'"
        else:
            how = f"route at line {self.rule.line} ({self.rule.kind} {self.rule.pattern!r})"
        lines = [
            f"task:        {self.task_name}",
            f"matched:     {how}",
            f"exchange:    {d.exchange or '(default exchange)'}",
            f"routing key: {d.routing_key}",
        ]
        if d.headers:
            lines.append(f"headers:     {dict(d.headers)}")
        if d.priority is not None:
            lines.append(f"priority:    {d.priority}")
        lines.append(f"queues:      {', '.join(sorted(self.queues)) if self.queues else '(none: unroutable)'}")
        return "\n".join(lines)


def destination_for_rule(rule: RouteRule, defaults: Defaults) -> Destination:
    """Where a rule sends its tasks. A rule that names only a queue publishes through
    the default exchange by the queue's name, which reaches exactly that queue."""
    if rule.queue is not None and rule.exchange is None and rule.routing_key is None:
        return Destination(DEFAULT_EXCHANGE, rule.queue, rule.headers, rule.priority)
    exchange = rule.exchange if rule.exchange is not None else defaults.exchange
    routing_key = rule.routing_key if rule.routing_key is not None else defaults.routing_key
    return Destination(exchange, routing_key, rule.headers, rule.priority)


class Router:
    """Maps task names to destinations: the first matching rule wins, else the defaults."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[RouteRule | None, Destination]] = {}
        self._options: dict[str, TaskOptions] = {}  # settings never change, so neither do these
        self._effective: dict[tuple[str, TaskOptions], TaskOptions] = {}

    def rule_for(self, task_name: str) -> RouteRule | None:
        for rule in self._settings.routes:
            if rule.matches(task_name):
                return rule
        return None

    def route(self, task_name: str) -> Destination:
        cached = self._cache.get(task_name)
        if cached is None:
            rule = self.rule_for(task_name)
            defaults = self._settings.defaults
            dest = destination_for_rule(rule, defaults) if rule else Destination(defaults.exchange, defaults.routing_key)
            cached = self._cache[task_name] = (rule, dest)
        return cached[1]

    def options_for(self, task_name: str) -> TaskOptions:
        """routing.yaml's options for a task: its `tasks:` entry over its route's `options`."""
        options = self._options.get(task_name)
        if options is None:
            rule = self.rule_for(task_name)
            route_options = rule.options if rule else TaskOptions()
            options = self._options[task_name] = self._settings.tasks.get(task_name, TaskOptions()).merged_over(
                route_options)
        return options

    def effective_options(self, task_name: str, decorator: TaskOptions = TaskOptions()) -> TaskOptions:
        """A task's options as the publisher and the worker both apply them: the
        decorator's over routing.yaml's (`options_for`). Call-time options and the
        message's own headers come on top of these, where each is used."""
        key = (task_name, decorator)
        options = self._effective.get(key)
        if options is None:
            options = self._effective[key] = decorator.merged_over(self.options_for(task_name))
        return options

    def destination_for_queue(self, queue: str) -> Destination:
        """`apply_async(queue=...)`: through the default exchange by the queue's name."""
        if queue not in self._settings.topology.queues:
            raise RoutingError(f"queue {queue!r} is not declared in {self._settings.source}")
        return Destination(DEFAULT_EXCHANGE, queue)

    def explain(self, task_name: str) -> Decision:
        dest = self.route(task_name)
        return Decision(
            task_name=task_name,
            destination=dest,
            rule=self.rule_for(task_name),
            queues=self._settings.topology.route(dest.exchange, dest.routing_key, dest.headers),
            options=self.options_for(task_name),
        )
