"""The translated Model as a commented routing.yaml."""
from __future__ import annotations

from typing import Any, Mapping

from .collect import Model, Raw
from .document import Builder, flow, scalar
from .routing import QUEUE_KEYS, QueueDecl, RuleDecl


def render(model: Model, dropped: Mapping[tuple, str], *, sections: frozenset[str]) -> Builder:
    out = Builder()
    for line in model.header:
        out.note(line)
    _scalars(out, "broker", model.broker, dropped)
    _defaults(out, model, dropped)
    _exchanges(out, model, dropped)
    _queues(out, model, dropped)
    _routes(out, model.routes, dropped)
    _tasks(out, model, dropped)
    _scalars(out, "worker", model.worker, dropped)
    _scalars(out, "results", model.results, dropped)
    if "schedules" in sections and model.schedules:
        _schedules(out, model, dropped)
    if "timezone" in sections and model.timezone is not None and ("timezone",) not in dropped:
        out.blank()
        out.note(model.timezone[1], key=("timezone",))
        out.add(f"timezone: {scalar(model.timezone[0])}", ("timezone",))
    return out


def _value(value: Any) -> str:
    return str(value) if isinstance(value, Raw) else flow(value)


def _scalars(out: Builder, section: str, values: Mapping[str, tuple[Any, str]], dropped: Mapping[tuple, str]) -> None:
    kept = {k: v for k, v in values.items() if (section, k) not in dropped}
    if not kept:
        return
    out.blank()
    out.add(f"{section}:")
    for key, (value, origin) in kept.items():
        line = f"  {key}: {_value(value)}"
        out.add(f"{line}  # {origin}" if origin and "\n" not in origin else line, (section, key))


def _defaults(out: Builder, model: Model, dropped: Mapping[tuple, str]) -> None:
    kept = {k: v for k, v in model.defaults.items() if ("defaults", k) not in dropped}
    if not kept or ("defaults",) in dropped:
        return
    out.blank()
    if model.defaults_note:
        out.note(model.defaults_note)
    out.add("defaults:", ("defaults",))
    for key, (value, origin) in kept.items():
        line = f"  {key}: {_value(value)}"
        key_of = ("defaults",) if key in ("exchange", "routing_key", "queue") else ("defaults", key)
        out.add(f"{line}  # {origin}" if origin else line, key_of)


def _exchanges(out: Builder, model: Model, dropped: Mapping[tuple, str]) -> None:
    kept = [x for x in model.exchanges.values() if ("exchange", x.name) not in dropped]
    if not kept:
        return
    out.blank()
    out.add("exchanges:")
    for x in kept:
        spec: dict[str, Any] = {"type": x.type}
        if not x.durable:
            spec["durable"] = False
        if x.auto_delete:
            spec["auto_delete"] = True
        arguments = dict(x.arguments)
        if "alternate-exchange" in arguments:
            spec["alternate_exchange"] = arguments.pop("alternate-exchange")
        if arguments:
            spec["arguments"] = arguments
        out.add(f"  {scalar(x.name)}: {flow(spec)}", ("exchange", x.name))


def _queues(out: Builder, model: Model, dropped: Mapping[tuple, str]) -> None:
    kept = [q for q in model.queues.values() if ("queue", q.name) not in dropped]
    if not kept:
        return
    out.blank()
    out.add("queues:")
    for queue in kept:
        _queue(out, queue, dropped)


def _queue(out: Builder, queue: QueueDecl, dropped: Mapping[tuple, str]) -> None:
    key = ("queue", queue.name)
    spec = _queue_options(queue)
    bindings = [(i, b) for i, b in enumerate(queue.bindings) if ("binding", queue.name, i) not in dropped]
    if not bindings:
        out.add(f"  {scalar(queue.name)}: {flow(spec)}", key)
        return
    out.add(f"  {scalar(queue.name)}:", key)
    for name, value in spec.items():
        out.add(f"    {name}: {flow(value)}", key)
    out.add("    bindings:", key)
    for i, binding in bindings:
        item: dict[str, Any] = {"exchange": binding.exchange, "routing_key": binding.routing_key}
        if binding.arguments:
            item["arguments"] = dict(binding.arguments)
        out.add(f"      - {flow(item)}", ("binding", queue.name, i))


def _queue_options(queue: QueueDecl) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if not queue.durable:
        spec["durable"] = False
    if queue.exclusive:
        spec["exclusive"] = True
    if queue.auto_delete:
        spec["auto_delete"] = True
    arguments = {}
    for name, value in queue.arguments.items():
        if name in QUEUE_KEYS:
            spec[QUEUE_KEYS[name]] = value
        else:
            arguments[name] = value
    if arguments:
        spec["arguments"] = arguments
    return spec


def _routes(out: Builder, routes: list[RuleDecl], dropped: Mapping[tuple, str]) -> None:
    kept = [(i, r) for i, r in enumerate(routes) if ("route", i) not in dropped]
    if not kept:
        return
    out.blank()
    out.add("routes:")
    for i, rule in kept:
        key = ("route", i)
        out.note(rule.comment, 2, key)
        out.add(f"  - task: {scalar(rule.pattern)}", key)
        for name in ("exchange", "routing_key", "queue", "priority"):
            value = getattr(rule, name)
            if value is not None:
                out.add(f"    {name}: {scalar(value)}", key)
        if rule.options:
            out.add(f"    options: {flow(dict(rule.options))}", key)


def _tasks(out: Builder, model: Model, dropped: Mapping[tuple, str]) -> None:
    kept = {n: v for n, v in model.tasks.items() if ("task", n) not in dropped}
    if not kept:
        return
    out.blank()
    out.add("tasks:")
    for name, (options, origin) in kept.items():
        out.note(origin, 2, ("task", name))
        out.add(f"  {scalar(name)}: {flow(options)}", ("task", name))


def _schedules(out: Builder, model: Model, dropped: Mapping[tuple, str]) -> None:
    kept = [s for s in model.schedules if ("schedule", s.name) not in dropped]
    if not kept:
        return
    out.blank()
    out.add("schedules:")
    for entry in kept:
        key = ("schedule", entry.name)
        for note in entry.notes:
            out.note(note, 2, key)
        out.add(f"  {scalar(entry.name)}:", key)
        for name, value in entry.fields.items():
            out.add(f"    {name}: {flow(value)}", key)
