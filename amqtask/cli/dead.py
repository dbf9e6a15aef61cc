"""`amqtask dead`: list, show, re-drive and purge dead letters, without the management plugin."""
from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import click

from ..deadletters import (DeadLetter, Listing, MoveReport, Selector, Target, find_letter, format_age,
                           journal_queue, list_letters, purge, quorum_refusal, requeue, targets)
from . import main
from .common import EXIT_RUNTIME, config_option, fail, handle_errors, load, table

queue_option = click.option(
    "-Q", "--queue", default=None, metavar="QUEUE",
    help="A queue whose dead letters to use, or a dead-letter queue itself. [default: every dead-letter "
         "queue of routing.yaml]")
reorder_option = click.option(
    "--allow-reorder", is_flag=True,
    help="Read a quorum dead-letter queue anyway: RabbitMQ counts each message read as a delivery "
         "(x-delivery-count) and may change their order.")


@main.group()
def dead() -> None:
    """Dead letters: what failed, why, and sending it back.

    A worker dead-letters a message it will not run (undecodable, unknown task, final
    failure) to its queue's dead-letter exchange, or to `<queue>.dead`, with the
    reason in the x-amqtask-reason header. These commands read those queues with
    basic.get (no management plugin), leave what they do not move in its place, and
    move messages with publisher confirms.

    A quorum dead-letter queue counts every message read and put back as a delivery
    (x-delivery-count); no way of reading it avoids that. With an x-delivery-limit,
    RabbitMQ drops a message put back that many times: a letter at a limit that
    routing.yaml declares is published to its queue again instead (to the back, its
    count reset). A limit set by a policy (RabbitMQ 4 gives every quorum queue one of
    20) is not known here: each ls, show, and requeue or purge that leaves a letter
    in place brings it one delivery closer.
    """


@dead.command("ls")
@queue_option
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True, metavar="N",
              help="Show at most this many dead letters per dead-letter queue.")
@reorder_option
@config_option
@handle_errors
def ls(queue: str | None, limit: int, allow_reorder: bool, config_path: str | None) -> None:
    """List dead letters: queue, reason, task, id, age and how many times each died.

    Each one is taken and put back in its place (on a classic queue the broker keeps
    the order; it marks them redelivered).
    """
    from ..amqp.deadletters import PikaDeadLetters

    settings = load(config_path)
    now = dt.datetime.now(dt.timezone.utc)
    rows: list[tuple[str, ...]] = [("QUEUE", "REASON", "TASK", "ID", "AGE", "COUNT")]
    notes: list[str] = []
    with PikaDeadLetters(settings.broker) as broker:
        for target in targets(settings.topology, queue):
            listing = list_letters(broker, target, limit=limit, allow_reorder=allow_reorder)
            notes.extend(_notes(listing, limit))
            rows.extend((letter.origin or "?", _short(letter.reason, 60), letter.task or "?", letter.task_id or "?",
                         format_age(letter.age(now)), str(letter.deaths)) for letter in listing.letters)
    if len(rows) > 1:
        click.echo(table(rows))
    elif not notes:
        click.echo("no dead letters" + (f" for {queue}" if queue else ""))
    for note in notes:
        click.echo(note)


def _notes(listing: Listing, limit: int) -> list[str]:
    name = listing.target.dead_queue
    notes = []
    if listing.quorum:
        notes.append(f"{name}: {listing.depth} messages not shown: {quorum_refusal(name)}")
    elif listing.depth and len(listing.letters) >= limit and listing.depth > limit:
        notes.append(f"{name}: {listing.depth - limit} more not shown (--limit)")
    if listing.pending_moves:
        notes.append(f"{name}: an interrupted requeue left moves to finish; run `amqtask dead requeue -Q {name}`")
    return notes


@dead.command()
@click.argument("task_id")
@queue_option
@reorder_option
@config_option
@handle_errors
def show(task_id: str, queue: str | None, allow_reorder: bool, config_path: str | None) -> None:
    """Show one dead letter: why it died, its properties, headers and body."""
    from ..amqp.deadletters import PikaDeadLetters

    settings = load(config_path)
    with PikaDeadLetters(settings.broker) as broker:
        letter = find_letter(broker, targets(settings.topology, queue), task_id, allow_reorder=allow_reorder)
    if letter is None:
        fail(f"no dead letter with id {task_id}" + (f" for {queue}" if queue else ""), EXIT_RUNTIME)
    else:
        click.echo(_describe(letter, dt.datetime.now(dt.timezone.utc)))


def _describe(letter: DeadLetter, now: dt.datetime) -> str:
    failed = letter.failed_at
    lines = [
        f"dead-letter queue: {letter.dead_queue}",
        f"queue:             {letter.origin or '?'}",
        f"reason:            {letter.reason}",
        f"task:              {letter.task or '?'}",
        f"id:                {letter.task_id or '?'}",
        f"failed at:         {failed.isoformat() if failed else '?'} ({format_age(letter.age(now))} ago)",
        f"worker:            {letter.headers.get('x-amqtask-worker', '?')}",
        f"count:             {letter.deaths}",
        "properties:",
        *(f"  {k}: {v}" for k, v in sorted(letter.properties.items())),
        "headers:",
        *(f"  {k}: {_value(v)}" for k, v in sorted(letter.headers.items())),
        "body:",
        _body(letter),
    ]
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return value.isoformat() if isinstance(value, dt.datetime) else repr(value)


def _body(letter: DeadLetter) -> str:
    if str(letter.properties.get("content_type", "")).endswith("json"):
        try:
            return json.dumps(json.loads(letter.body), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    text = letter.body[:4000].decode("utf-8", errors="replace")
    return text + (f"\n... ({len(letter.body)} bytes)" if len(letter.body) > 4000 else "")


def _short(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _selected(command: Any) -> Any:
    """--reason and --task, shared by requeue and purge."""
    command = click.option("--task", "task_name", default=None, metavar="NAME",
                           help="Only this task (a name or a glob).")(command)
    return click.option("--reason", default=None, metavar="TEXT",
                        help="Only dead letters whose reason contains TEXT (any case).")(command)


@dead.command("requeue")
@queue_option
@_selected
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Move at most N dead letters per queue.")
@config_option
@handle_errors
def requeue_command(queue: str | None, reason: str | None, task_name: str | None, limit: int | None,
                    config_path: str | None) -> None:
    """Send dead letters back to the queue they died in.

    Each is published with its retry count reset and the re-drive recorded in the
    x-amqtask-redriven headers, confirmed by that queue, and only then removed; one
    the queue refuses (full) or does not confirm within publish_timeout stays. A run
    that is interrupted loses nothing: run it again and it finishes. Stopped between a
    queue's confirm and the run's record of it, one message may be sent twice; both
    copies carry the same x-amqtask-redrive-id.
    """
    from ..amqp.deadletters import PikaDeadLetters

    settings = load(config_path)
    select = Selector(reason=reason, task=task_name)
    total = 0
    with PikaDeadLetters(settings.broker) as broker:
        for target in targets(settings.topology, queue):
            if not broker.depth(target.dead_queue) and broker.depth(journal_queue(target.dead_queue)) is None:
                continue  # nothing to move and nothing to finish
            report = requeue(broker, target, select=select, limit=limit)
            total += report.total + report.finished
            _print_report(report, broker.depth(target.dead_queue) or 0)
    if total == 0:
        click.echo("nothing to requeue")


def _print_report(report: MoveReport, left: int) -> None:
    name = report.dead_queue
    for origin, count in sorted(report.moved.items()):
        click.echo(f"{name} -> {origin}: {count} moved")
    if report.finished:
        click.echo(f"{name}: {report.finished} moves of an interrupted requeue finished")
    for origin in report.missing:
        click.echo(f"{name}: queue {origin!r} does not exist; its dead letters stay", err=True)
    for origin in report.refused:
        click.echo(f"{name}: queue {origin!r} refused the messages (full, with overflow reject-publish?); "
                   "its dead letters stay", err=True)
    if report.no_origin:
        click.echo(f"{name}: {report.no_origin} dead letters name no queue; they stay", err=True)
    click.echo(f"{name}: {left} left")


@dead.command("purge")
@queue_option
@_selected
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@config_option
@handle_errors
def purge_command(queue: str | None, reason: str | None, task_name: str | None, force: bool,
                  config_path: str | None) -> None:
    """Delete dead letters (all of them, or those chosen by --queue, --reason, --task)."""
    from ..amqp.deadletters import PikaDeadLetters

    settings = load(config_path)
    select = Selector(reason=reason, task=task_name)
    chosen: list[Target] = targets(settings.topology, queue)
    what = ", ".join(t.dead_queue for t in chosen)
    if not force and not click.confirm(f"Delete {'the chosen' if not select.everything else 'all'} dead letters "
                                       f"in {what}?", default=False):
        click.echo("aborted")
        sys.exit(EXIT_RUNTIME)
    with PikaDeadLetters(settings.broker) as broker:
        for target in chosen:
            report = purge(broker, target, select=select)
            if report.deleted or report.left:
                click.echo(f"{target.dead_queue}: {report.deleted} deleted"
                           + (f", {report.left} kept" if report.left else ""))
