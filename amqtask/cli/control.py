"""`amqtask control` and `amqtask events`, and what `amqtask inspect` shares with them:
Celery's remote-control protocol (`celery.pidbox`), so these commands reach amqtask
and Celery workers alike, and Celery's event stream (`celeryev`)."""
from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from typing import Any, Callable, Sequence

import click

from . import main
from .common import EXIT_RUNTIME, EXIT_USAGE, config_option, fail, handle_errors, load, names, table


class UnderscoreGroup(click.Group):
    """Accepts `rate-limit` for `rate_limit`, as typed by people used to dashes."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or super().get_command(ctx, cmd_name.replace("-", "_"))


def remote_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """-d/--destination, --timeout, --json and --config, shared by inspect and control."""
    for option in reversed((
        click.option("-d", "--destination", default=None, metavar="NAME[,NAME]",
                     help="Only these workers (their -n names); default: every worker."),
        click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait for replies."),
        click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON, {worker: reply}."),
        config_option,
    )):
        command = option(command)
    return command


def broadcast(config_path: str | None, method: str, arguments: dict[str, Any] | None = None, *,
              destination: str | None, timeout: float,
              before: Callable[[Any, Any], None] | None = None) -> dict[str, Any]:
    """Send one command and return the replies as {worker: reply}; `before(client,
    settings)` runs first on the same connection."""
    from ..amqp.control_client import ControlClient

    settings = load(config_path)
    targets = names(destination) or None
    with ControlClient(settings.broker, name=f"amqtask {method}") as client:
        if before is not None:
            before(client, settings)
        replies = client.broadcast(method, arguments, destination=targets, timeout=timeout)
    merged: dict[str, Any] = {}
    for reply in replies:
        merged.update(reply)
    return merged


def no_reply(timeout: float) -> None:
    fail(f"no worker answered within {timeout:g}s", EXIT_RUNTIME)


def say(rows: list[tuple[str, ...]]) -> None:
    click.echo(table(rows) if len(rows) > 1 else "(nothing)")


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def when(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return "-"
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def outcome(reply: Any) -> tuple[bool, str]:
    """(succeeded, text) for a control reply: {"ok": ...} or {"error": ...}, or
    nothing (a Celery worker's answer to `heartbeat`)."""
    if reply is None:
        return True, "done"
    if isinstance(reply, dict) and "error" in reply:
        return False, f"error: {reply['error']}"
    if isinstance(reply, dict) and "ok" in reply:
        return True, str(reply["ok"])
    return True, short(reply)


# -- the worker's monitoring flags ---------------------------------------------------------
def monitor_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """-E/--events, --heartbeat-interval, --metrics-port and --control for `amqtask worker`;
    it passes them on with `monitor_settings`."""
    for option in reversed((
        click.option("-E", "--events", "task_events", is_flag=True, default=None,
                     help="Send task events (Flower, `amqtask events`) [default: worker.events]."),
        click.option("--heartbeat-interval", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     help="Seconds between worker-heartbeat events; 0: none [default: worker.heartbeat_interval, 2]."),
        click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
                     help="Serve Prometheus metrics on this port [default: worker.metrics_port]."),
        click.option("--control", "control_mode", type=click.Choice(["all", "read-only", "off"]), default=None,
                     help="Remote control allowed [default: worker.control, all]."),
    )):
        command = option(command)
    return command


def monitor_settings(base: Any, *, task_events: bool | None = None, heartbeat_interval: float | None = None,
                     metrics_port: int | None = None, control_mode: str | None = None) -> Any:
    """routing.yaml's worker monitoring settings (`base`, a MonitorSettings) with the
    flags given on the command line over them."""
    import dataclasses

    given = {"events": task_events, "heartbeat_interval": heartbeat_interval, "metrics_port": metrics_port,
             "control": control_mode}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


# -- amqtask control -----------------------------------------------------------------------
@main.group(cls=UnderscoreGroup)
def control() -> None:
    """Tell running workers to do something (Celery's remote control: reaches amqtask
    and Celery workers). Exit 1 when no worker answers or one refuses."""


def _control(config_path: str | None, method: str, arguments: dict[str, Any], destination: str | None,
             timeout: float, as_json: bool, before: Callable[[Any, Any], None] | None = None,
             when_nobody: Callable[[], None] | None = None) -> None:
    replies = broadcast(config_path, method, arguments, destination=destination, timeout=timeout, before=before)
    if not replies:
        (when_nobody or (lambda: no_reply(timeout)))()
        return
    if as_json:
        click.echo(json.dumps(replies, indent=2, default=str))
    results = {node: outcome(reply) for node, reply in sorted(replies.items())}
    if not as_json:
        for node, (_, text) in results.items():
            click.echo(f"{node}: {text}")
    sys.exit(0 if all(ok for ok, _ in results.values()) else EXIT_RUNTIME)


@control.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the task if it is running (prefork: signal its child).")
@click.option("--signal", "signal_name", default="TERM", show_default=True, help="Signal for --terminate.")
@remote_options
@handle_errors
def revoke(task_ids: tuple[str, ...], terminate: bool, signal_name: str, destination: str | None, timeout: float,
           as_json: bool, config_path: str | None) -> None:
    """Revoke tasks by id: workers will not run them, now or when they arrive
    later. The revocation is also recorded in the revoked stream (worker.revoked_stream),
    so workers that start within 3 hours honour it too."""
    recorded: list[str] = []

    def record(client: Any, settings: Any) -> None:
        stream = settings.worker.monitor.revoked_stream
        if stream:
            client.record_revoked(stream, list(task_ids), by="amqtask control")
            recorded.append(stream)

    def nobody() -> None:
        if not recorded:
            no_reply(timeout)
        click.echo(f"no worker answered within {timeout:g}s; the revocation is recorded in {recorded[0]} "
                   "for workers that start later")

    arguments: dict[str, Any] = {"task_id": list(task_ids), "persisted": True}
    if terminate:
        arguments.update(terminate=True, signal=signal_name)
    _control(config_path, "revoke", arguments, destination, timeout, as_json, before=record, when_nobody=nobody)


@control.command(name="rate_limit")
@click.argument("task_name")
@click.argument("rate")
@remote_options
@handle_errors
def rate_limit(task_name: str, rate: str, destination: str | None, timeout: float, as_json: bool,
               config_path: str | None) -> None:
    """Set a task type's rate limit: 10/s, 5/m, 100/h (0: no limit)."""
    _control(config_path, "rate_limit", {"task_name": task_name, "rate_limit": rate}, destination, timeout, as_json)


@control.command(name="time_limit")
@click.argument("task_name")
@click.argument("soft", type=float)
@click.argument("hard", type=float, required=False)
@remote_options
@handle_errors
def time_limit(task_name: str, soft: float, hard: float | None, destination: str | None, timeout: float,
               as_json: bool, config_path: str | None) -> None:
    """Set a task type's soft (and hard) time limit in seconds."""
    _control(config_path, "time_limit", {"task_name": task_name, "soft": soft, "hard": hard}, destination,
             timeout, as_json)


@control.command(name="add_consumer")
@click.argument("queue")
@remote_options
@handle_errors
def add_consumer(queue: str, destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Start consuming QUEUE (one routing.yaml declares)."""
    _control(config_path, "add_consumer", {"queue": queue}, destination, timeout, as_json)


@control.command(name="cancel_consumer")
@click.argument("queue")
@remote_options
@handle_errors
def cancel_consumer(queue: str, destination: str | None, timeout: float, as_json: bool,
                    config_path: str | None) -> None:
    """Stop consuming QUEUE."""
    _control(config_path, "cancel_consumer", {"queue": queue}, destination, timeout, as_json)


@control.command()
@click.option("-f", "--force", is_flag=True, help="Without -d, do not ask before stopping every worker.")
@remote_options
@handle_errors
def shutdown(force: bool, destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Warm shutdown: stop consuming, finish running tasks, exit."""
    if not destination and not force:
        click.confirm("Shut down every worker on this broker?", abort=True, err=True)
    _control(config_path, "shutdown", {}, destination, timeout, as_json)


@control.command()
@remote_options
@handle_errors
def heartbeat(destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Ask workers to send a worker-heartbeat event now (Flower does at start)."""
    _control(config_path, "heartbeat", {}, destination, timeout, as_json)


@control.command(name="enable_events")
@remote_options
@handle_errors
def enable_events(destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Start sending task events."""
    _control(config_path, "enable_events", {}, destination, timeout, as_json)


@control.command(name="disable_events")
@remote_options
@handle_errors
def disable_events(destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Stop sending task events."""
    _control(config_path, "disable_events", {}, destination, timeout, as_json)


@control.command(name="pool_grow")
@click.argument("n", type=click.IntRange(min=1), default=1)
@remote_options
@handle_errors
def pool_grow(n: int, destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Add N processes or threads to the pool, where the pool allows it (the
    prefetch window grows with it); refused on workers started with --autoscale."""
    _control(config_path, "pool_grow", {"n": n}, destination, timeout, as_json)


@control.command(name="pool_shrink")
@click.argument("n", type=click.IntRange(min=1), default=1)
@remote_options
@handle_errors
def pool_shrink(n: int, destination: str | None, timeout: float, as_json: bool, config_path: str | None) -> None:
    """Remove N processes or threads from the pool, where the pool allows it;
    refused on workers started with --autoscale."""
    _control(config_path, "pool_shrink", {"n": n}, destination, timeout, as_json)


@control.command()
@click.argument("max_slots", metavar="MAX", type=click.IntRange(min=1))
@click.argument("min_slots", metavar="[MIN]", type=click.IntRange(min=0), required=False)
@remote_options
@handle_errors
def autoscale(max_slots: int, min_slots: int | None, destination: str | None, timeout: float, as_json: bool,
              config_path: str | None) -> None:
    """Change the autoscaler's max (and min) pool size, on workers started with
    --autoscale; the pool is brought within them at once."""
    arguments = {"max": max_slots, **({"min": min_slots} if min_slots is not None else {})}
    _control(config_path, "autoscale", arguments, destination, timeout, as_json)


# -- amqtask events -------------------------------------------------------------------------
TASK_STATES = {"task-received": "RECEIVED", "task-started": "STARTED", "task-succeeded": "SUCCESS",
               "task-failed": "FAILURE", "task-retried": "RETRY", "task-revoked": "REVOKED",
               "task-rejected": "REJECTED"}


class Summary:
    """Workers and tasks as the event stream shows them (a small `celery.events.State`)."""

    def __init__(self) -> None:
        self.workers: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def add(self, event: dict[str, Any]) -> None:
        kind, host = event.get("type", ""), str(event.get("hostname", "?"))
        with self.lock:
            worker = self.workers.setdefault(host, {"seen": 0.0, "freq": 2.0, "active": 0, "processed": 0,
                                                    "offline": False, "events": 0})
            worker["events"] += 1
            if kind.startswith("worker-"):
                worker.update(seen=time.time(), offline=kind == "worker-offline",
                              freq=_number(event.get("freq"), 2.0), active=event.get("active", 0),
                              processed=event.get("processed", 0), sw=f"{event.get('sw_ident')} {event.get('sw_ver')}")
            elif kind in TASK_STATES and isinstance(event.get("uuid"), str):
                task = self.tasks.setdefault(event["uuid"], {"name": None, "worker": host})
                task["state"] = TASK_STATES[kind]
                task["name"] = event.get("name") or task["name"]
                if "runtime" in event:
                    task["runtime"] = event["runtime"]

    def render(self) -> str:
        with self.lock:
            now = time.time()
            rows = [("WORKER", "STATUS", "ACTIVE", "PROCESSED", "EVENTS")]
            for host, w in sorted(self.workers.items()):
                alive = not w["offline"] and w["seen"] and now < w["seen"] + 2 * w["freq"]
                rows.append((host, "online" if alive else "offline", str(w["active"]), str(w["processed"]),
                             str(w["events"])))
            counts: dict[tuple[str, str], int] = {}
            for task in self.tasks.values():
                key = (str(task["name"] or "?"), task["state"])
                counts[key] = counts.get(key, 0) + 1
        task_rows = [("TASK", "STATE", "COUNT")] + [(n, s, str(c)) for (n, s), c in sorted(counts.items())]
        return "\n".join([table(rows) if len(rows) > 1 else "(no workers seen yet)", "",
                          table(task_rows) if len(task_rows) > 1 else "(no task events yet)"])


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def describe(event: dict[str, Any]) -> str:
    """One line per event for --dump."""
    kind = event.get("type", "?")
    parts = [when(event.get("timestamp")), str(event.get("hostname")), kind]
    if kind.startswith("task-"):
        parts.append(str(event.get("uuid")))
        for key in ("name", "args", "kwargs", "result", "runtime", "exception", "expired", "terminated", "requeue"):
            value = event.get(key)
            if value in (None, ""):
                continue
            if key == "runtime" and isinstance(value, (int, float)):
                parts.append(f"runtime={value:.6f}s")
            else:
                parts.append(f"{key}={short(value, 80)}")
    else:
        parts.extend(f"{k}={event.get(k)}" for k in ("active", "processed", "freq") if k in event)
    return " ".join(parts)


@main.command()
@click.option("--dump", is_flag=True, help="Print every event as it arrives, instead of the summary.")
@click.option("--json", "as_json", is_flag=True, help="With --dump: one JSON object per line.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop after this long [default: run until Ctrl-C].")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between summary refreshes.")
@config_option
@handle_errors
def events(dump: bool, as_json: bool, duration: float | None, interval: float, config_path: str | None) -> None:
    """Watch Celery's event stream: the workers and tasks of amqtask and Celery
    workers (task events need workers started with events on: -E or worker.events)."""
    from ..amqp.control_client import read_events

    if as_json and not dump:
        fail("--json goes with --dump", EXIT_USAGE)
    settings = load(config_path)
    stop = threading.Event()
    summary = Summary()
    errors: list[BaseException] = []

    def on_event(event: dict[str, Any]) -> None:
        if dump:
            click.echo(json.dumps(event, default=str) if as_json else describe(event))
        else:
            summary.add(event)

    def reader() -> None:
        try:
            read_events(settings.broker, on_event, stop=stop)
        except BaseException as exc:  # handed to the main thread, reported there
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=reader, name="amqtask-events", daemon=True)
    thread.start()
    deadline = None if duration is None else time.monotonic() + duration
    tty = sys.stdout.isatty()
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            stop.wait(min(interval, max(0.0, deadline - time.monotonic())) if deadline else interval)
            if not dump and not errors:
                click.echo(("\x1b[H\x1b[2J" if tty else "") + summary.render() + ("" if tty else "\n"))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        thread.join(5)
    if errors:
        raise errors[0]


def summarize_rows(replies: dict[str, Any], build: Callable[[str, Any], Sequence[tuple[str, ...]]],
                   header: tuple[str, ...]) -> list[tuple[str, ...]]:
    rows = [header]
    for node, reply in sorted(replies.items()):
        if isinstance(reply, dict) and "error" in reply:
            rows.append((node, f"error: {reply['error']}", *[""] * (len(header) - 2)))
        else:
            rows.extend(build(node, reply))
    return rows
