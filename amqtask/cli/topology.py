"""Commands about routing.yaml and the broker's objects: check, routes, route,
declare, purge."""
from __future__ import annotations

import sys

import click

from ..amqp.blocking import BlockingTransport
from ..router import Router
from ..topology.loader import check_file, format_problems, resolve_config_path
from ..topology.model import Topology
from . import main
from .common import EXIT_RUNTIME, EXIT_USAGE, app_option, config_option, fail, handle_errors, load, table


@main.command()
@app_option(required=False, help="Also check that schedules name tasks this app registers.")
@config_option
def check(app_spec: str | None, config_path: str | None) -> None:
    """Validate routing.yaml without touching the broker.

    Reports every problem as file:line:column. Exit 0 when valid (warnings
    allowed), 2 when not.
    """
    path = resolve_config_path(config_path)
    tasks = _app_tasks(app_spec) if app_spec else None
    result = check_file(path, tasks=tasks)
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
        + (f", {len(s.schedules)} schedules" if s.schedules else "")
        + (f", {len(result.warnings)} warnings" if result.warnings else "")
    )
    click.echo(f"broker: {', '.join(u.redacted() for u in s.broker.urls)}")


def _app_tasks(app_spec: str) -> list[str]:
    from ..app import load_app
    from ..errors import AmqtaskError

    try:
        return list(load_app(app_spec).tasks)
    except AmqtaskError as exc:
        fail(str(exc), EXIT_USAGE)
        raise  # unreachable: fail() exits


@main.command("routes")
@config_option
def routes_command(config_path: str | None) -> None:
    """List the route rules in order, with the queues each reaches."""
    settings = load(config_path)
    from ..router import destination_for_rule

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
    click.echo(table(rows))


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

