"""A Celery configuration -> a routing.yaml that `amqtask check` accepts, and a report.

The routing is checked twice before anything is written: the text must pass the
same loader `amqtask check` uses (an item it refuses is left out and reported, not
written broken), and for every task name known, the destination amqtask's router
gives must be the one Celery's router gives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..router import Router
from ..settings import Settings
from ..topology import loader
from .celery_routes import CeleryRouting, annotation_globals, translate_routing
from .collect import Run
from .document import comment
from .names import normalize
from .render import render
from .report import NOT_TRANSLATED, Report
from .settings_map import (translate_app_options, translate_beat, translate_broker, translate_leftovers,
                           translate_results, translate_serialization, translate_task_options, translate_worker)
from .source import CeleryConfig, CeleryImportError, load_config

MAX_PASSES = 50  # each pass leaves out at least one refused item; real configs need one or two


@dataclass(frozen=True)
class Translation:
    """routing.yaml text, the Settings it loads as, the report, and the App options
    (task_always_eager, imports) that live outside routing.yaml."""

    text: str
    report: Report
    settings: Settings
    app_options: Mapping[str, Any] = field(default_factory=dict)


def import_celery(spec: Any, *, namespace: str | None = None, task_names: Iterable[str] = ()) -> Translation:
    """Read a Celery configuration (module name, .py file, "module:attribute", or an
    object) and translate it."""
    return translate(load_config(spec), namespace=namespace, task_names=task_names)


def translate(config: CeleryConfig, *, namespace: str | None = None, task_names: Iterable[str] = ()) -> Translation:
    # An app's settings may gain new names after it loaded old ones; only a config object can mix them.
    run = Run(normalize(config.settings, namespace=namespace, check_mixing=not config.from_app))
    sections = frozenset(loader.SECTIONS)  # read now: the loader gains sections over time
    translate_broker(run)
    translate_serialization(run)
    every_task = {**translate_task_options(run), **annotation_globals(run.peek("task_annotations"))}
    names = set(task_names) | set(config.task_names) | _scheduled_tasks(run.peek("beat_schedule"))
    try:
        celery = translate_routing(run, task_names=names, global_options=every_task)
    except CeleryImportError:
        raise
    except Exception as exc:  # Celery itself cannot build its queues or routes from these settings
        raise CeleryImportError(f"{config.origin}: Celery cannot build its queues and routes from this "
                                f"configuration: {type(exc).__name__}: {exc}") from None
    translate_worker(run)
    translate_results(run, backend_key="backend" in loader.RESULTS_KEYS)
    translate_beat(run, schedules="schedules" in sections, timezone="timezone" in sections)
    translate_app_options(run)
    translate_leftovers(run)
    _header(run, config)
    text, settings, warnings = _checked(run, sections)
    checked = _verify(run, celery, settings, celery.names)
    report = Report(config.origin, tuple(run.entries), tuple(run.problems), tuple(checked), tuple(warnings))
    return Translation(text, report, settings, dict(run.app_options))


def _scheduled_tasks(beat: Any) -> set[str]:
    if not isinstance(beat, Mapping):
        return set()
    return {e["task"] for e in beat.values() if isinstance(e, Mapping) and isinstance(e.get("task"), str)}


def _header(run: Run, config: CeleryConfig) -> None:
    left = sorted({e.setting.split("[")[0] for e in run.entries if e.status == NOT_TRANSLATED})
    run.model.header[:0] = [
        f"routing.yaml translated by `amqtask import-celery` from the Celery configuration {config.origin}.",
        "Every task goes where Celery would send it: same exchange, routing key and queue, with Celery's "
        "implicit defaults written out.",
        *([f"Not translated (the import report says why): {', '.join(left)}."] if left else []),
    ]


def _checked(run: Run, sections: frozenset[str]) -> tuple[str, Settings, list[str]]:
    """Render, check, leave out what the loader refuses, until it passes."""
    dropped: dict[tuple, str] = {}
    for _ in range(MAX_PASSES):
        builder = render(run.model, dropped, sections=sections)
        result = loader.check_text(builder.text(), source="routing.yaml")
        if result.settings is not None:
            return _finish(run, builder.text(), dropped), result.settings, [str(p) for p in result.warnings]
        refused: dict[tuple, str] = {}
        for problem in result.errors:
            key = builder.key_at(problem.position.line)
            if key is None or key in dropped:
                raise CeleryImportError("the translation does not pass amqtask check (please report this):\n"
                                        + loader.format_problems(result.errors))
            refused.setdefault(key, problem.message)
        dropped.update(refused)
    raise CeleryImportError("the translation does not pass amqtask check after leaving out every refused item")


def _finish(run: Run, text: str, dropped: Mapping[tuple, str]) -> str:
    if not dropped:
        return text
    lines = ["", *comment("Left out because amqtask check refuses them:")]
    for key, reason in dropped.items():
        what = _describe(key)
        run.problem(f"{what}: not translated: amqtask check refuses it: {reason}")
        lines.extend(comment(f"  {what}: {reason}"))
    return text + "\n".join(lines) + "\n"


def _describe(key: tuple) -> str:
    kind, *rest = key
    return {"route": lambda: f"route #{rest[0] + 1}", "binding": lambda: f"binding #{rest[1] + 1} of queue {rest[0]!r}",
            "queue": lambda: f"queue {rest[0]!r}", "exchange": lambda: f"exchange {rest[0]!r}",
            "task": lambda: f"task options for {rest[0]!r}", "schedule": lambda: f"schedule {rest[0]!r}",
            }.get(kind, lambda: ".".join(map(str, key)))()


def _verify(run: Run, celery: CeleryRouting, settings: Settings, names: Iterable[str]) -> list[str]:
    """For every known task name: Celery's destination and amqtask's must reach the
    same queues (and, but for the documented wildcard case, be the same exchange and key)."""
    router = Router(settings)
    topology = settings.topology
    agreed = []
    for name in sorted(names):
        try:
            target = celery.target(celery.options_for(name, celery.task_routing.get(name)))
        except Exception as exc:
            run.problem(f"{name}: Celery cannot route it: {type(exc).__name__}: {exc}")
            continue
        ours = router.route(name)
        theirs_queues = topology.route(target.exchange, target.routing_key)
        our_queues = topology.route(ours.exchange, ours.routing_key, ours.headers)
        same = (ours.exchange, ours.routing_key) == (target.exchange, target.routing_key)
        if same or (our_queues == theirs_queues and our_queues):
            agreed.append(f"{name} -> exchange {target.exchange or '(default)'!r} key {target.routing_key!r} -> "
                          f"{', '.join(sorted(theirs_queues)) or '(no queue)'}")
        elif not theirs_queues:
            run.problem(f"{name}: Celery's publish reaches no queue (exchange {target.exchange or '(default)'!r}, "
                        f"key {target.routing_key!r}); amqtask sends it to {', '.join(sorted(our_queues))}")
        else:
            run.problem(f"{name}: routes differ: Celery -> {target.exchange or '(default)'}/{target.routing_key} "
                        f"({', '.join(sorted(theirs_queues))}); amqtask -> {ours.exchange or '(default)'}/"
                        f"{ours.routing_key} ({', '.join(sorted(our_queues)) or 'nothing'})")
    return agreed
