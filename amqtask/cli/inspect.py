"""`amqtask inspect`: ask running workers about themselves, with Celery's remote
control protocol (amqtask and Celery workers both answer)."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence

import click

from . import main
from .common import EXIT_RUNTIME, handle_errors, load, names
from .control import UnderscoreGroup, broadcast, no_reply, remote_options, say, short, summarize_rows, when


@main.group(cls=UnderscoreGroup)
def inspect() -> None:
    """Ask running workers about themselves (Celery's inspect: reaches amqtask and
    Celery workers). Exit 1 when no worker answers."""


@inspect.command()
@remote_options
@handle_errors
def ping(destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Ping workers. Exit 0 when at least one answers and every amqtask worker that
    answers says it is consuming; 1 otherwise (usable as a health check)."""
    from ..control import ping_workers

    settings = load(config_path)
    replies: list[dict[str, Any]] = []
    targets: list[str | None] = [*names(destination)] or [None]  # None: every worker
    for target in targets:
        replies.extend(ping_workers(settings.broker, timeout=timeout, destination=target))
    if not replies:
        no_reply(timeout)
    if as_json:
        click.echo(json.dumps({r.get("hostname"): r for r in replies}, indent=2, default=str))
    healthy = True
    for reply in replies:
        if "error" in reply:  # e.g. the worker's loop did not get to the question in time
            healthy = False
            state = f"error: {reply['error']}"
        elif "consuming" not in reply:  # a Celery worker: answering is all it says
            state = "does not report consuming"
        else:
            healthy = healthy and bool(reply["consuming"])
            state = "consuming" if reply["consuming"] else "NOT consuming"
            state += f" {', '.join(reply.get('queues', []))}; {reply.get('active', 0)} active"
        if not as_json:
            click.echo(f"{reply.get('hostname')}: pong ({state})")
    sys.exit(0 if healthy else EXIT_RUNTIME)


def _show(method: str, arguments: dict[str, Any] | None, header: tuple[str, ...],
          build: Callable[[str, Any], Sequence[tuple[str, ...]]], *, destination: str | None, timeout: float,
          as_json: bool, config_path: str | None) -> None:
    """Ask, print the replies as a table (or JSON), exit 1 when nobody answers or one errs."""
    replies = broadcast(config_path, method, arguments, destination=destination, timeout=timeout)
    if not replies:
        no_reply(timeout)
    if as_json:
        click.echo(json.dumps(replies, indent=2, default=str))
    else:
        say(summarize_rows(replies, build, header))
    sys.exit(EXIT_RUNTIME if any(isinstance(r, dict) and "error" in r for r in replies.values()) else 0)


def _inspection(method: str, header: tuple[str, ...], build: Callable[[str, Any], Sequence[tuple[str, ...]]],
                doc: str, arguments: dict[str, Any] | None = None) -> None:
    @remote_options
    @handle_errors
    def command(destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
        _show(method, arguments, header, build, destination=destination, timeout=timeout, as_json=as_json,
              config_path=config_path)

    command.__doc__ = doc
    inspect.command(name=method)(command)


def _stats(node: str, s: Any) -> list[tuple[str, ...]]:
    pool = s.get("pool") or {}
    consuming = s.get("consuming")
    return [(node, str(s.get("pid", "-")), f"{s.get('uptime', '-')}s",
             str(pool.get("implementation", "-")).rsplit(":", 1)[-1], str(pool.get("max-concurrency", "-")),
             str(s.get("prefetch_count", "-")), str(sum((s.get("total") or {}).values())),
             "-" if consuming is None else "yes" if consuming else "NO")]


def _queried(node: str, found: Any) -> list[tuple[str, ...]]:
    """query_task's {id: [state, request]} as rows."""
    rows: list[tuple[str, ...]] = []
    for task_id, entry in sorted((found or {}).items()):
        entry = entry if isinstance(entry, list) else []
        state = entry[0] if entry else None
        request = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        rows.append((node, str(task_id), str(state), str(request.get("name")), short(request.get("args"), 40),
                     str(request.get("worker_pid") or "-")))
    return rows


def _requests(node: str, items: Any) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in items or []:
        request = r.get("request", r)  # `scheduled` wraps each request with its eta
        rows.append((node, str(request.get("id")), str(request.get("name")), short(request.get("args"), 40),
                     when(request.get("time_start")) if "eta" not in r else str(r.get("eta")),
                     str(request.get("worker_pid") or "-")))
    return rows


_inspection("stats", ("WORKER", "PID", "UPTIME", "POOL", "CONCURRENCY", "PREFETCH", "TASKS", "CONSUMING"),
            lambda n, s: _stats(n, s), "Worker statistics: pid, uptime, pool, prefetch, tasks run, consuming.")
_inspection("registered", ("WORKER", "TASK"), lambda n, r: [(n, line) for line in r or []],
            "Tasks each worker can run, with the rate limits set on them.")
_inspection("active", ("WORKER", "ID", "TASK", "ARGS", "STARTED", "PID"), _requests,
            "Tasks running now.", {"safe": True})
_inspection("reserved", ("WORKER", "ID", "TASK", "ARGS", "STARTED", "PID"), _requests,
            "Tasks received and waiting for a free pool slot.")
_inspection("scheduled", ("WORKER", "ID", "TASK", "ARGS", "ETA", "PID"), _requests,
            "Tasks held in a worker until their eta (amqtask parks those in the broker: usually none).")
_inspection("revoked", ("WORKER", "REVOKED ID"), lambda n, r: [(n, i) for i in r or []],
            "Revoked task ids each worker honours.")
_inspection("active_queues", ("WORKER", "QUEUE", "EXCHANGE", "ROUTING KEY", "DURABLE"),
            lambda n, qs: [(n, q.get("name", "?"), (q.get("exchange") or {}).get("name") or "(default)",
                            str(q.get("routing_key")), str(q.get("durable"))) for q in qs or []],
            "Queues each worker consumes.")
_inspection("conf", ("WORKER", "SETTING", "VALUE"),
            lambda n, c: [(n, k, short(v)) for k, v in sorted((c or {}).items())],
            "Each worker's configuration (never its broker password).")
_inspection("clock", ("WORKER", "CLOCK"), lambda n, r: [(n, str((r or {}).get("clock", "-")))],
            "Each worker's logical clock (the Lamport clock its events and replies carry).")


@inspect.command(name="query_task")
@click.argument("task_ids", nargs=-1, required=True)
@remote_options
@handle_errors
def query_task(task_ids: tuple[str, ...], destination: str | None, timeout: float, as_json: bool,
               config_path: str | None) -> None:
    """Where tasks are: which worker holds each id, and whether it is running
    (active), waiting for a pool slot (reserved) or held for its eta (scheduled).
    Ids no worker holds are not listed."""
    _show("query_task", {"ids": list(task_ids)}, ("WORKER", "ID", "STATE", "TASK", "ARGS", "PID"), _queried,
          destination=destination, timeout=timeout, as_json=as_json, config_path=config_path)
