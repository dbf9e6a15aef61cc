"""The `amqtask` command. Exit status: 0 success, 1 runtime error (broker, publish),
2 usage or configuration error. Nothing else imports this module."""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from . import __version__
from .amqp.blocking import BlockingTransport
from .errors import AmqtaskError, BrokerError, ConfigError, RoutingError, SerializationError
from .publisher import CallOptions, Publisher
from .results import AsyncResult, ResultConsumer
from .router import Router
from .settings import Settings
from .topology.loader import CONFIG_ENV, check_file, format_problems, resolve_config_path
from .topology.model import Topology

EXIT_RUNTIME = 1
EXIT_USAGE = 2

config_option = click.option(
    "--config", "config_path", metavar="PATH", envvar=CONFIG_ENV, default=None,
    help=f"routing.yaml to use [default: ./routing.yaml, or ${CONFIG_ENV}]",
)


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn amqtask's errors into one clear line and the documented exit status."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            click.echo(format_problems(exc.problems) or str(exc), err=True)
            sys.exit(EXIT_USAGE)
        except (RoutingError, SerializationError) as exc:
            fail(str(exc), EXIT_USAGE)
        except BrokerError as exc:
            fail(str(exc), EXIT_RUNTIME)
        except AmqtaskError as exc:
            fail(str(exc), EXIT_RUNTIME)

    return wrapper


def load(config_path: str | None) -> Settings:
    """Validated settings, or the problems on stderr and exit 2."""
    result = check_file(config_path)
    if result.settings is None:
        click.echo(format_problems(result.problems), err=True)
        sys.exit(EXIT_USAGE)
    if result.warnings:
        click.echo(format_problems(result.warnings), err=True)
    return result.settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="amqtask")
def main() -> None:
    """amqtask: a RabbitMQ-first task queue.

    routing.yaml declares exchanges, queues, bindings and the routes from task
    names to them. Start with `amqtask check`, then `amqtask declare`.
    """


@main.command()
@config_option
def check(config_path: str | None) -> None:
    """Validate routing.yaml without touching the broker.

    Reports every problem as file:line:column. Exit 0 when valid (warnings
    allowed), 2 when not.
    """
    path = resolve_config_path(config_path)
    result = check_file(path)
    if result.problems:
        click.echo(format_problems(result.problems), err=True)
    if result.settings is None:
        n = len(result.errors)
        click.echo(f"{path}: {n} error{'s' if n != 1 else ''}", err=True)
        sys.exit(EXIT_USAGE)
    s = result.settings
    t = s.topology
    click.echo(
        f"{path}: OK: {len(t.exchanges)} exchanges, {len(t.queues)} queues, {len(t.bindings)} bindings, "
        f"{len(s.routes)} routes, {len(s.tasks)} task option sets"
        + (f", {len(result.warnings)} warnings" if result.warnings else "")
    )
    click.echo(f"broker: {', '.join(u.redacted() for u in s.broker.urls)}")


@main.command("routes")
@config_option
def routes_command(config_path: str | None) -> None:
    """List the route rules in order, with the queues each reaches."""
    settings = load(config_path)
    from .router import destination_for_rule

    rows = [("LINE", "TASK", "MATCH", "EXCHANGE", "ROUTING KEY", "QUEUES")]
    for rule in settings.routes:
        d = destination_for_rule(rule, settings.defaults)
        queues = settings.topology.route(d.exchange, d.routing_key, d.headers)
        rows.append((str(rule.line), rule.pattern, rule.kind, d.exchange or "(default)", d.routing_key,
                     ", ".join(sorted(queues)) or "(none)"))
    dflt = settings.defaults
    queues = settings.topology.route(dflt.exchange, dflt.routing_key)
    rows.append(("-", "(anything else)", "default", dflt.exchange or "(default)", dflt.routing_key,
                 ", ".join(sorted(queues)) or "(none)"))
    click.echo(_table(rows))


@main.command()
@click.argument("task_name")
@config_option
def route(task_name: str, config_path: str | None) -> None:
    """Explain where TASK_NAME goes: the rule that matched, exchange, routing key, queues."""
    settings = load(config_path)
    decision = Router(settings).explain(task_name)
    click.echo(decision.explain())
    if not decision.queues:
        sys.exit(EXIT_RUNTIME)


@main.command()
@click.option("--dry-run", is_flag=True, help="Print what would be declared; do not connect.")
@config_option
@handle_errors
def declare(dry_run: bool, config_path: str | None) -> None:
    """Declare every exchange, queue and binding of routing.yaml (idempotent).

    An existing exchange or queue with other arguments is reported as a conflict
    (exit 1); everything else is still declared.
    """
    settings = load(config_path)
    topology = settings.topology
    if dry_run:
        click.echo(_plan(topology))
        return
    with BlockingTransport(settings.broker) as transport:
        conflicts = transport.declare(topology)
    declared_exchanges = len(topology.exchanges)
    click.echo(
        f"declared {declared_exchanges} exchanges, {len(topology.queues)} queues, {len(topology.bindings)} bindings "
        f"on {settings.broker.urls[0].redacted()}"
        + (f" ({len(conflicts)} conflicts)" if conflicts else "")
    )
    for conflict in conflicts:
        click.echo(f"conflict: {conflict}", err=True)
    if conflicts:
        click.echo("hint: delete the existing object (amqtask purge does not) or change routing.yaml to match it",
                   err=True)
        sys.exit(EXIT_RUNTIME)


@main.command()
@click.argument("task_name")
@click.option("--args", "args_json", default="[]", metavar="JSON", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", metavar="JSON", help="Keyword arguments as a JSON object.")
@click.option("--exchange", default=None, help="Override the routed exchange.")
@click.option("--routing-key", default=None, help="Override the routed routing key.")
@click.option("-Q", "--queue", default=None, help="Send straight to this queue (default exchange).")
@click.option("--countdown", type=float, default=None, metavar="SECONDS", help="Run no earlier than this from now.")
@click.option("--priority", type=click.IntRange(0, 255), default=None)
@click.option("--serializer", type=click.Choice(["json", "msgpack", "yaml", "pickle"]), default=None)
@click.option("--wait", is_flag=True, help="Wait for the result and print it (exit 1 if the task failed).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds --wait waits.")
@config_option
@handle_errors
def call(task_name: str, args_json: str, kwargs_json: str, exchange: str | None, routing_key: str | None,
         queue: str | None, countdown: float | None, priority: int | None, serializer: str | None, wait: bool,
         timeout: float, config_path: str | None) -> None:
    """Publish TASK_NAME from the shell and print its id and destination.

    The publish is confirmed by the broker; a message no queue would receive is
    refused as unroutable (exit 1).
    """
    args = _json_arg(args_json, list, "--args", "a JSON list, like '[2, 3]'")
    kwargs = _json_arg(kwargs_json, dict, "--kwargs", "a JSON object, like '{\"x\": 1}'")
    settings = load(config_path)
    router = Router(settings)
    results = ResultConsumer(settings.broker, settings.results, settings.broker.accept_content) if wait else None
    publisher = Publisher(settings, router, results=results)
    try:
        sent = publisher.send(task_name, args, kwargs, call=CallOptions(
            exchange=exchange, routing_key=routing_key, queue=queue, countdown=countdown, priority=priority,
            serializer=serializer))
        d = sent.destination
        queues = settings.topology.route(d.exchange, d.routing_key, d.headers)
        click.echo(f"task id:     {sent.task_id}")
        click.echo(f"exchange:    {d.exchange or '(default exchange)'}")
        click.echo(f"routing key: {d.routing_key}")
        click.echo(f"queues:      {', '.join(sorted(queues)) or '(per the broker)'}")
        if wait:
            payload = AsyncResult(sent.task_id, task_name, d, results).get(timeout=timeout, propagate=False)
            state = results.latest(sent.task_id)["status"] if results and results.latest(sent.task_id) else "?"
            click.echo(f"state:       {state}")
            click.echo(f"result:      {json.dumps(payload)}")
            if state != "SUCCESS":
                sys.exit(EXIT_RUNTIME)
    finally:
        publisher.close()


@main.command()
@click.option("-Q", "--queues", "queue_names", required=True, help="Comma-separated queue names to purge.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@config_option
@handle_errors
def purge(queue_names: str, force: bool, config_path: str | None) -> None:
    """Delete every ready message in the named queues."""
    settings = load(config_path)
    names = [n.strip() for n in queue_names.split(",") if n.strip()]
    unknown = [n for n in names if n not in settings.topology.queues]
    if unknown:
        fail(f"not declared in {settings.source}: {', '.join(unknown)}", EXIT_USAGE)
    if not force and not click.confirm(f"Purge all messages from {', '.join(names)}?", default=False):
        click.echo("aborted")
        sys.exit(EXIT_RUNTIME)
    with BlockingTransport(settings.broker) as transport:
        for name in names:
            count = transport.purge(name)
            click.echo(f"{name}: purged {count} message{'' if count == 1 else 's'}")


@main.command(context_settings={"show_default": True})
@click.option("-A", "--app", "app_spec", required=True, metavar="MODULE[:APP]",
              help="Module defining the App and its tasks.")
@click.option("-Q", "--queues", default=None, metavar="Q1,Q2",
              help="Queues to consume. [default: worker.queues, else every queue in routing.yaml]")
@click.option("-X", "--exclude-queues", default=None, metavar="Q1,Q2", help="Queues not to consume.")
@click.option("-c", "--concurrency", type=click.IntRange(1), default=None,
              help="Pool slots. [default: worker.concurrency, else the number of CPUs]")
@click.option("--processes", type=click.IntRange(1), default=None, metavar="N",
              help="Run N complete workers (each its own connection, prefetch window and pool): one process "
                   "handles messages on one core at most. Default: worker.processes, else 1.")
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "asyncio", "solo"]), default=None,
              help="Execution pool. [default: worker.pool, else prefork]")
@click.option("--prefetch-multiplier", type=click.IntRange(0), default=None,
              help="Unacked messages per consumer = concurrency x this; 0 = unlimited. [default: 4]")
@click.option("-O", "optimization", type=click.Choice(["fair", "fast"]), default=None,
              help="fair: hand tasks only to idle slots. fast: accepted for Celery compatibility; same. "
                   "[default: fair]")
@click.option("-n", "--hostname", default=None, help="Worker name (%h: host, %p: pid).")
@click.option("-l", "--loglevel", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                                                     case_sensitive=False), default=None)
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=None, help="prefork: recycle after N tasks.")
@click.option("--max-memory-per-child", type=click.IntRange(1), default=None, metavar="KIB",
              help="prefork: recycle a child whose resident memory exceeds this after a task.")
@click.option("--time-limit", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Hard time limit for every task without its own.")
@click.option("--soft-time-limit", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Soft time limit (SoftTimeLimitExceeded inside the task).")
@click.option("--purge", is_flag=True, help="Delete waiting messages from the consumed queues before starting.")
@config_option
@handle_errors
def worker(app_spec: str, queues: str | None, exclude_queues: str | None, concurrency: int | None,
           processes: int | None, pool: str | None, prefetch_multiplier: int | None, optimization: str | None, hostname: str | None,
           loglevel: str | None, max_tasks_per_child: int | None, max_memory_per_child: int | None,
           time_limit: float | None, soft_time_limit: float | None, purge: bool, config_path: str | None) -> None:
    """Consume tasks and run them.

    Messages are acknowledged after the task finishes (late acks), at most
    concurrency x prefetch-multiplier are unacknowledged per queue, and delayed
    tasks wait in the broker, not here. SIGTERM or Ctrl-C once: finish running
    tasks and exit; twice: stop now (unacknowledged messages return to their queues).
    With --processes N, each of N processes is such a worker; signals sent to
    this command reach them all, and a process that dies is replaced.
    """
    import asyncio
    import logging
    import os

    from .app import load_app
    from .worker.consumer import Worker, WorkerConfig, default_hostname

    app = load_app(app_spec)
    if config_path is not None:
        app.configure(load(config_path))
    settings = app.settings
    w = settings.worker
    level = (loglevel or w.loglevel).upper()
    logging.basicConfig(level=level, format="[%(asctime)s %(levelname)s/%(processName)s] %(message)s")
    chosen = _names(queues) or list(w.queues) or list(settings.topology.queues)
    excluded = set(_names(exclude_queues) or w.exclude_queues)
    chosen = [q for q in chosen if q not in excluded]
    if not chosen:
        fail("no queues to consume: name some with -Q or declare them in routing.yaml", EXIT_USAGE)
    unknown = [q for q in chosen if q not in settings.topology.queues]
    for name in unknown:
        click.echo(f"warning: queue {name!r} is not in {settings.source}; declaring it as a plain durable queue",
                   err=True)
    config = WorkerConfig(
        queues=tuple(chosen),
        concurrency=concurrency or w.concurrency or os.cpu_count() or 1,
        pool=pool or w.pool,
        prefetch_multiplier=w.prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier,
        optimization=optimization or w.optimization,
        hostname=default_hostname(hostname or w.name),
        max_tasks_per_child=max_tasks_per_child or w.max_tasks_per_child,
        max_memory_per_child=max_memory_per_child or w.max_memory_per_child,
        time_limit=time_limit or w.time_limit,
        soft_time_limit=soft_time_limit or w.soft_time_limit,
        purge=purge,
    )
    if config.pool == "solo":
        config = WorkerConfig(**{**config.__dict__, "concurrency": 1})
    count = processes or w.processes
    click.echo(_banner(app, config, count))
    if count > 1:
        from .worker.processes import SHUTDOWN_SIGNAL, supervise

        sys.stdout.flush()
        code = supervise(count, lambda: asyncio.run(Worker(app, config).run(signals=(SHUTDOWN_SIGNAL,))))
        sys.exit(code)
    code = asyncio.run(Worker(app, config).run())
    if code != 0:
        # Cold shutdown: task threads cannot be stopped, and the interpreter would wait
        # for them at exit. The connection is closed, so their messages are requeued.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


@main.group()
def inspect() -> None:
    """Ask running workers about themselves."""


@inspect.command()
@click.option("-d", "--destination", default=None, help="Only this worker (its -n name).")
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait for replies.")
@config_option
@handle_errors
def ping(destination: str | None, timeout: float, config_path: str | None) -> None:
    """Ping workers. Exit 0 when at least one answers and every answer says it is
    consuming; 1 otherwise (usable as a health check)."""
    from .control import ping_workers

    settings = load(config_path)
    replies = ping_workers(settings.broker, timeout=timeout, destination=destination)
    if not replies:
        fail(f"no worker answered within {timeout:g}s", EXIT_RUNTIME)
    healthy = True
    for reply in replies:
        state = "consuming" if reply.get("consuming") else "NOT consuming"
        healthy = healthy and bool(reply.get("consuming"))
        click.echo(f"{reply.get('hostname')}: pong ({state} {', '.join(reply.get('queues', []))}; "
                   f"{reply.get('active', 0)} active)")
    sys.exit(0 if healthy else EXIT_RUNTIME)


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _banner(app: Any, config: Any, processes: int = 1) -> str:
    settings = app.settings
    topology = settings.topology
    each = " in each process" if processes > 1 else ""
    lines = [
        f"amqtask {__version__} worker {config.hostname}",
        f"  broker:      {', '.join(u.redacted() for u in settings.broker.urls)}",
        *([f"  processes:   {processes}, each with its own connection"] if processes > 1 else []),
        f"  pool:        {config.pool}, concurrency {config.concurrency}{each}",
        f"  prefetch:    {config.prefetch or 'unlimited'} per queue{each} (concurrency x {config.prefetch_multiplier}), "
        f"late acks, {config.optimization} dispatch",
        "  queues:",
    ]
    for name in config.queues:
        bindings = [f"{b.source}:{b.routing_key}" if b.routing_key else b.source
                    for b in topology.bindings_to_queue(name)]
        lines.append(f"    {name}" + (f"  <- {', '.join(bindings)}" if bindings else ""))
    lines.append("  tasks:")
    lines.extend(f"    {name}" for name in sorted(app.tasks))
    return "\n".join(lines)


def _json_arg(text: str, kind: type, flag: str, example: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{flag} is not valid JSON ({exc.msg} at column {exc.colno}); expected {example}", EXIT_USAGE)
    if not isinstance(value, kind):
        fail(f"{flag} must be {example}", EXIT_USAGE)
    return value


def _plan(topology: Topology) -> str:
    lines = ["exchanges:"]
    for x in topology.exchanges.values():
        flags = [x.type, "durable" if x.durable else "transient"]
        flags += ["auto-delete"] * x.auto_delete + ["internal"] * x.internal
        args = x.declare_arguments()
        lines.append(f"  {x.name}: {', '.join(flags)}" + (f" {args}" if args else ""))
    lines.append("queues:")
    for q in topology.queues.values():
        flags = ["durable" if q.durable else "transient"] + ["exclusive"] * q.exclusive
        flags += ["auto-delete"] * q.auto_delete
        lines.append(f"  {q.name}: {', '.join(flags)}" + (f" {dict(q.arguments)}" if q.arguments else ""))
    lines.append("bindings:")
    for b in topology.bindings:
        kind = "exchange" if b.to_exchange else "queue"
        extra = f" {dict(b.arguments)}" if b.arguments else ""
        lines.append(f"  {b.source} -> {kind} {b.destination} key {b.routing_key!r}{extra}")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


if __name__ == "__main__":  # pragma: no cover
    main()
