"""task_queues, task_routes, task_default_* and task_annotations, translated through a
private Celery app so that queues are normalised exactly as Celery normalises them
(default exchange and routing key filled in, missing queues created)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from ..settings import TASK_OPTION_NAMES
from ..topology.loader import RATE_LIMIT
from ..topology.model import Topology
from .collect import Run
from .routing import (ROUTE_OPTIONS, ExchangeDecl, RuleDecl, Target, exchanges_of, is_map,
                      map_entries, publish_target, queue_decl, route_value, routers, topology_of)

ROUTING_SETTINGS = ("task_queues", "task_routes", "task_default_queue", "task_default_exchange",
                    "task_default_exchange_type", "task_default_routing_key", "task_create_missing_queues",
                    "task_create_missing_queue_type", "task_create_missing_queue_exchange_type",
                    "task_queue_max_priority", "task_default_queue_type")
# Task attributes an annotation may set that reach the publish's routing.
ROUTING_ATTRIBUTES = ("queue", "exchange", "routing_key", "exchange_type")
_WILDCARD = re.compile(r"(^|\.)[*#](\.|$)")


@dataclass(frozen=True)
class Pending:
    """A rule waiting for the topology to be complete: pattern, Celery's target, route."""

    pattern: str
    target: Target
    route: Mapping[str, Any]
    comment: str


class CeleryRouting:
    """Celery's view of the configuration's queues and routes."""

    def __init__(self, run: Run) -> None:
        from celery import Celery

        self.app = Celery("amqtask-import-celery", set_as_current=False)
        routing = {k: run.settings[k].value for k in ROUTING_SETTINGS if k in run.settings}
        self.app.conf.update(routing)
        self.queues = self.app.amqp.queues  # Celery's Queues: a missing one is created on lookup
        self.router = self.app.amqp.router
        self.task_routing: dict[str, dict[str, Any]] = {}  # routing attributes annotations give tasks
        self.names: set[str] = set()  # every task name known: given, routed by name, annotated, scheduled
        conf = self.app.conf
        self.default_exchange = str(conf.task_default_exchange)
        self.default_key = conf.task_default_routing_key
        try:
            self.default_queue = self.app.amqp.default_queue
        except KeyError:
            self.default_queue = None

    def options_for(self, name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What Celery's router gives for a task name (before the publish)."""
        return self.router.route(dict(options or {}), name, (), {}, None)

    def target(self, options: Mapping[str, Any]) -> Target:
        return publish_target(options, self.default_queue, self.default_exchange, self.default_key)

    def expand(self, route: Mapping[str, Any]) -> dict[str, Any]:
        return self.router.expand_destination(dict(route))


def translate_routing(run: Run, *, task_names: Iterable[str], global_options: Mapping[str, Any]) -> CeleryRouting:
    """Fill run.model's exchanges, queues, defaults, routes and tasks. The returned
    CeleryRouting knows every task name met on the way (`names`)."""
    taken = {key: run.take(key) for key in ROUTING_SETTINGS}
    celery = CeleryRouting(run)
    celery.names.update(task_names)
    annotations = _annotations(run, celery.names)
    celery.task_routing = {name: {k: v for k, v in attrs.items() if k in ROUTING_ATTRIBUTES and v is not None}
                           for name, attrs in annotations.items()}
    pending = _annotation_rules(celery, annotations) + _route_rules(run, celery, celery.names)
    _declare(run, celery)
    topology = topology_of(run.model.exchanges, run.model.queues)
    _defaults(run, celery)
    for item in pending:
        rule = _rule(run, item, topology, global_options)
        if rule is not None:
            run.model.routes.append(rule)
    if global_options:
        run.model.routes.append(RuleDecl("*", "every other task: Celery's settings for all tasks "
                                              "(it goes where 'defaults' says)", options=dict(global_options)))
    _routing_entries(run, celery, {k: v for k, v in taken.items() if v is not None})
    return celery


def _routing_entries(run: Run, celery: CeleryRouting, taken: Mapping[str, Any]) -> None:
    conf = celery.app.conf
    model = run.model
    details = {
        "task_queues": ("queues", f"{len(model.queues)} queues as Celery declares them: {', '.join(model.queues)}"),
        "task_routes": ("routes", f"{len(model.routes)} rules, in Celery's order"),
        "task_default_queue": ("defaults.queue", f"{conf.task_default_queue!r}"),
        "task_default_exchange": ("exchanges", f"{conf.task_default_exchange!r}: the exchange of queues that name "
                                               "none"),
        "task_default_exchange_type": ("exchanges", f"{conf.task_default_exchange_type!r}"),
        "task_default_routing_key": ("queues", f"{conf.task_default_routing_key!r}: the binding key of queues that "
                                               "name none, and the routing key of routes that give none"),
    }
    default_key = model.defaults.get("routing_key", (None, ""))[0]
    if "task_default_routing_key" in taken and default_key not in (None, conf.task_default_routing_key):
        target, detail = details["task_default_routing_key"]
        details["task_default_routing_key"] = (target, f"{detail}; tasks without a route are published with "
                                                       f"{default_key!r} (the default queue's own binding key), "
                                                       "as Celery does")
    for key, setting in taken.items():
        target, detail = details.get(key, ("queues", "applied by Celery to the queues it declares"))
        run.translated(setting, target, detail)


# -- routes ---------------------------------------------------------------------------------

def _route_rules(run: Run, celery: CeleryRouting, names: set[str]) -> list[Pending]:
    setting = run.settings.get("task_routes")
    if setting is None:
        return []
    pending: list[Pending] = []
    prepared = celery.app.amqp.routes
    for index, router in enumerate(routers(setting.value)):
        if is_map(router):
            pending.extend(_map_rules(run, celery, router, index, setting.written, names))
        else:
            pending.extend(_function_rules(run, celery, prepared[index], router, names, setting.written))
    return pending


def _map_rules(run: Run, celery: CeleryRouting, router: Any, index: int, written: str,
               names: set[str]) -> list[Pending]:
    try:
        entries = map_entries(router, index)
    except (TypeError, ValueError) as exc:
        run.problem(f"{written}[{index}] is not a mapping or a list of (pattern, route) pairs ({exc}): Celery "
                    "fails on it too; not translated")
        return []
    pending = []
    for entry in entries:
        if not isinstance(entry.key, re.Pattern) and "*" not in entry.key:
            names.add(entry.key)
        where = f"{written} {entry.key if isinstance(entry.key, str) else entry.key.pattern!r}"
        try:
            route = route_value(entry.value)
            target = celery.target(celery.expand(route))
        except Exception as exc:  # Celery raises here too (QueueNotFound, a bad route value)
            run.problem(f"{where}: Celery cannot route it ({type(exc).__name__}: {exc}); not translated")
            continue
        pending.append(Pending(entry.pattern, target, route, f"{where}: {entry.value!r}"))
    return pending


def _function_rules(run: Run, celery: CeleryRouting, prepared: Any, router: Any, names: set[str],
                    written: str) -> list[Pending]:
    """A router function can only be asked about names we know: each answer becomes an
    exact rule, in the router's place in the list."""
    label = getattr(router, "__qualname__", None) or str(router)
    pending, answered = [], []
    for name in sorted(names):
        try:
            route = celery.router.query_router(prepared, name, (), {}, {}, None)
            if route is None:
                continue
            target = celery.target(celery.expand(route if not isinstance(route, str) else {"queue": route}))
        except Exception as exc:
            run.problem(f"{written}: router {label} raised {type(exc).__name__} for {name!r}: {exc}")
            continue
        answered.append(name)
        pending.append(Pending(name, target, route if isinstance(route, Mapping) else {"queue": route},
                               f"{written}: router {label}({name!r}) -> {route!r}"))
    run.changed(f"{written}: router {label}", "routes",
                f"asked about {len(names)} known task names, routed {len(answered)} "
                f"({', '.join(answered) or 'none'}); a router function cannot be asked about names it has not "
                "seen, so other tasks go to the defaults: name them with --task to translate them too")
    return pending


def _rule(run: Run, item: Pending, topology: Topology, global_options: Mapping[str, Any]) -> RuleDecl | None:
    target = item.target
    options = {**global_options, **{ROUTE_OPTIONS[k]: v for k, v in item.route.items() if k in ROUTE_OPTIONS}}
    extra = sorted(k for k in item.route if k not in ROUTE_OPTIONS and k not in ("queue", "exchange", "routing_key",
                                                                               "exchange_type", "priority"))
    if extra:
        run.untranslated(f"{item.comment.split(':')[0]} [{', '.join(extra)}]",
                         "publish options routing.yaml routes do not carry")
    priority = item.route.get("priority")
    base = RuleDecl(item.pattern, item.comment, priority=priority if isinstance(priority, int) else None,
                    options=options)
    lost = f"{item.comment}: Celery publishes these to exchange {target.exchange or '(default)'!r} with routing " \
           f"key {target.routing_key!r}, which reaches no queue (RabbitMQ drops them); not translated, so they " \
           "take the next rule or the defaults"
    if target.exchange == "":
        if target.routing_key in topology.queues:
            return replace(base, queue=target.routing_key)
        run.problem(lost)
        return None
    if target.exchange not in topology.exchanges:
        run.problem(f"{item.comment}: Celery publishes to exchange {target.exchange!r}, which no Celery queue "
                    "declares (the publish fails with 404 NOT_FOUND); not translated")
        return None
    reached = topology.route(target.exchange, target.routing_key)
    if not reached:
        run.problem(lost)
        return None
    if _WILDCARD.search(target.routing_key):
        return _wildcard_rule(run, base, target, reached, topology)
    return replace(base, exchange=target.exchange, routing_key=target.routing_key)


def _wildcard_rule(run: Run, base: RuleDecl, target: Target, reached: frozenset[str],
                   topology: Topology) -> RuleDecl | None:
    """Celery publishes with its queue's binding pattern as a literal routing key;
    routing.yaml refuses wildcard keys in routes. On a topic exchange a literal '*' or
    '#' word is matched only by binding wildcards, so any word no binding uses matches
    the same bindings: that key keeps the exchange and reaches the same queues."""
    label = base.comment.split(":")[0]
    if topology.exchanges[target.exchange].type != "direct":
        literal = _literal_key(target.routing_key, topology)
        if topology.route(target.exchange, literal) == reached:
            run.changed(label, f"routes[{base.pattern}]",
                        f"Celery publishes to exchange {target.exchange!r} with the literal key "
                        f"{target.routing_key!r} (its queue's binding pattern); routing.yaml refuses wildcard keys "
                        f"in routes, so the route uses {literal!r}, which reaches the same queues "
                        f"({', '.join(sorted(reached))})")
            return replace(base, exchange=target.exchange, routing_key=literal)
    if len(reached) == 1:
        (queue,) = reached
        run.changed(label, f"routes[{base.pattern}]",
                    f"Celery publishes to exchange {target.exchange!r} with the literal key {target.routing_key!r}; "
                    f"routing.yaml refuses wildcard keys in routes, so the route names queue {queue!r}, the only "
                    "queue that key reaches")
        return replace(base, queue=queue)
    run.problem(f"{base.comment}: Celery publishes with the literal routing key {target.routing_key!r}, "
                f"reaching {sorted(reached)}; routing.yaml refuses wildcards in a route's key; not translated")
    return None


def _literal_key(key: str, topology: Topology) -> str:
    used = {word for b in topology.bindings for word in b.routing_key.split(".")}
    fresh = next(w for w in (f"any{i}" if i else "any" for i in range(len(used) + 1)) if w not in used)
    return ".".join(fresh if word in ("*", "#") else word for word in key.split("."))


# -- declarations -----------------------------------------------------------------------------

def _declare(run: Run, celery: CeleryRouting) -> None:
    from kombu.common import Broadcast

    for queue in list(celery.queues.values()):
        if isinstance(queue, Broadcast):
            run.untranslated(f"task_queues {queue.alias or queue.name!r}", "a Broadcast queue: each Celery worker "
                             "gets a queue of its own on a fanout exchange; amqtask has no per-worker queues",
                             behaviour=True)
            continue
        for exchange in exchanges_of(queue):
            _add_exchange(run, exchange, queue.name)
        decl = queue_decl(queue)
        known = run.model.queues.get(decl.name)
        if known is not None:
            decl = replace(known, bindings=known.bindings + tuple(b for b in decl.bindings if b not in known.bindings))
        run.model.queues[decl.name] = decl


def _add_exchange(run: Run, exchange: ExchangeDecl, queue: str) -> None:
    known = run.model.exchanges.get(exchange.name)
    if known is None:
        run.model.exchanges[exchange.name] = exchange
        if exchange.transient:
            run.changed(f"exchange {exchange.name!r}", "defaults.persistent",
                        "kombu's delivery_mode=transient on an exchange has no per-exchange equivalent: set "
                        "defaults.persistent: false for every task, or leave messages persistent")
    elif (known.type, known.durable, known.auto_delete, dict(known.arguments)) != (
            exchange.type, exchange.durable, exchange.auto_delete, dict(exchange.arguments)):
        run.problem(f"exchange {exchange.name!r} is declared twice with different settings (queue {queue!r} "
                    f"wants {exchange.type}, durable={exchange.durable}); RabbitMQ refuses the second declaration "
                    "(406 PRECONDITION_FAILED): the first one is kept")


def _defaults(run: Run, celery: CeleryRouting) -> None:
    queue = celery.default_queue
    if queue is None:
        run.problem(f"task_default_queue {celery.app.conf.task_default_queue!r} is not in task_queues and "
                    "task_create_missing_queues is off: Celery cannot publish a task that matches no route "
                    "(amqtask refuses it at publish time the same way)")
        return
    target = celery.target({})
    model = run.model.defaults
    model["exchange"] = (target.exchange, "")
    model["routing_key"] = (target.routing_key, "")
    model["queue"] = (queue.name, "")
    how = ("through the default exchange by the queue's name (Celery short-circuits direct exchanges)"
           if target.exchange == "" else f"through exchange {target.exchange!r} with routing key "
                                         f"{target.routing_key!r}, the queue's own binding key, as Celery does")
    run.model.defaults_note = f"Tasks no route matches go to queue {queue.name!r} {how}."
    for key in ("task_default_queue", "task_default_exchange", "task_default_routing_key"):
        if key not in run.settings:
            value = getattr(celery.app.conf, key)
            run.implicit(key, "defaults", f"{value!r} (Celery's default) made explicit")


# -- annotations --------------------------------------------------------------------------------

def _annotations(run: Run, names: set[str]) -> dict[str, dict[str, Any]]:
    """Per task name, the attributes Celery's annotations set (specific first, then
    '*' over them: Celery applies the '*' annotation last, so it wins)."""
    setting = run.take("task_annotations")
    if setting is None or not setting.value:
        return {}
    maps = setting.value if isinstance(setting.value, (list, tuple)) else [setting.value]
    specific: dict[str, dict[str, Any]] = {}
    anything: dict[str, Any] | None = None
    for index, annotation in enumerate(maps):
        if not isinstance(annotation, Mapping):
            run.untranslated(f"{setting.written}[{index}]", f"{annotation!r}: an annotation object can only be "
                             "evaluated against Celery task classes")
            continue
        for name, attributes in annotation.items():
            if name == "*":
                anything = dict(attributes) if anything is None else anything
            else:
                specific.setdefault(str(name), dict(attributes))
    names.update(specific)
    result = {name: {**attrs, **(anything or {})} for name, attrs in specific.items()}
    _annotation_options(run, setting.written, result, anything or {})
    return result


def _annotation_options(run: Run, written: str, per_task: dict[str, dict[str, Any]], anything: dict[str, Any]) -> None:
    for name, attributes in [*per_task.items(), *([("*", anything)] if anything else [])]:
        options, left = {}, []
        for key, value in attributes.items():
            if key in ROUTING_ATTRIBUTES:
                continue
            if key in TASK_OPTION_NAMES and value is not None and _valid_option(key, value):
                options[key] = str(value) if key == "rate_limit" else value
            else:
                left.append(key)
        label = f"{written}[{name!r}]"
        if options and name != "*":
            run.model.tasks[name] = (options, label)
        if options:
            run.changed(label, "tasks" if name != "*" else "routes[*].options",
                        f"{options}: in Celery annotations win over the task's decorator; in amqtask the "
                        "decorator wins over routing.yaml")
        if left:
            run.untranslated(f"{label}[{', '.join(left)}]", "set these on the task's decorator or base class "
                                                            "(max_retries=None means unlimited there)")
    if anything:
        run.model.header.append(f"{written}['*'] applies to every task: its options are on every route.")


def _valid_option(key: str, value: Any) -> bool:
    return key != "rate_limit" or bool(RATE_LIMIT.match(str(value)))


def annotation_globals(annotations_value: Any) -> dict[str, Any]:
    """The options of the '*' annotation (every task)."""
    maps = annotations_value if isinstance(annotations_value, (list, tuple)) else [annotations_value]
    for annotation in maps:
        if isinstance(annotation, Mapping) and "*" in annotation:
            return {k: v for k, v in dict(annotation["*"]).items()
                    if k in TASK_OPTION_NAMES and v is not None and _valid_option(k, v)}
    return {}


def _annotation_rules(celery: CeleryRouting, annotations: Mapping[str, Mapping[str, Any]]) -> list[Pending]:
    """A task attribute `queue` (or exchange, routing_key) set by an annotation is an
    apply_async option: it wins over task_routes, so it becomes a rule before them."""
    pending = []
    for name, attributes in annotations.items():
        routing = {k: v for k, v in attributes.items() if k in ROUTING_ATTRIBUTES and v is not None}
        if routing:
            options = celery.options_for(name, routing)
            pending.append(Pending(name, celery.target(options), routing,
                                   f"task_annotations[{name!r}]: {routing!r} (a task attribute wins over routes)"))
    return pending


__all__ = ["CeleryRouting", "translate_routing", "annotation_globals"]
