"""Celery's remote-control commands, answered from a WorkerView.

Each command is a function `(ctx, arguments) -> reply`, registered with its kind:
`inspect` commands only read; `control` commands change something and are the
ones `worker.control: read-only` refuses, except `heartbeat` (it only asks for an
event) and those with a read-only variant that answers without the change (`hello`).
Replies have the shapes Celery's worker gives (celery/worker/control.py):
`{"ok": ...}` or `{"error": ...}` for actions, lists and dicts for inspections.
"""
from __future__ import annotations

import logging
import re
import signal as signals
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from ..events.build import bounded_repr
from ..events.clock import LamportClock
from ..events.dispatcher import EventDispatcher
from ..events.heartbeat import HeartbeatSchedule
from ..settings import Settings
from . import shapes
from .revoked import REVOKES_MAX, RevokedSet, valid_task_ids
from .view import ControlRefused, Runner, WorkerView, direct

INSPECT = "inspect"
CONTROL = "control"
CONTROL_MODES = ("all", "read-only", "off")
# Commands that change nothing a task depends on, allowed even with `read-only`.
HARMLESS_CONTROLS = frozenset({"heartbeat"})
_RATE = re.compile(r"^\s*\d+(\.\d+)?\s*(/\s*[smh])?\s*$")

log = logging.getLogger("amqtask.control")


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    return {"error": value}


class _ViewCalls:
    """The view, with every method call made through the runner."""

    def __init__(self, view: WorkerView, runner: Runner) -> None:
        self._view = view
        self._runner = runner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._view, name)
        return lambda *args, **kwargs: self._runner(lambda: method(*args, **kwargs))


@dataclass
class Context:
    """What command handlers work with: the node's static facts, the worker's view
    (called through `runner`), the events, the revoked set and the clock."""

    hostname: str
    view: WorkerView
    settings: Settings
    revoked: RevokedSet
    clock: LamportClock
    pid: int
    started: float = field(default_factory=time.time)
    runner: Runner = direct
    events: EventDispatcher | None = None
    heartbeat: HeartbeatSchedule | None = None
    persist_revoked: Callable[[Sequence[str]], None] | None = None  # where revocations outlive restarts

    @property
    def worker(self) -> Any:
        return _ViewCalls(self.view, self.runner)


Handler = Callable[[Context, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Command:
    name: str
    kind: str
    handler: Handler
    help: str
    read_only: Handler | None = None  # what runs under `read-only` instead of refusing: the reply, no change


@dataclass(frozen=True)
class Answer:
    """A reply, and what the command did for the audit log, for commands whose
    reply does not say it (an `{"ok": ...}` reply does). `note` None: it changed nothing."""

    reply: Any
    note: str | None


# -- inspect -----------------------------------------------------------------------------
def ping(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Ping: {"ok": "pong"}. Asked with `health: true` (amqtask's health check), the
    reply adds whether the worker is consuming, from which queues, and what runs."""
    if not args.get("health"):
        return ok("pong")
    counts = ctx.worker.counts()
    return {"ok": "pong", "consuming": bool(ctx.worker.consuming()), "queues": list(ctx.worker.queues()),
            "active": counts.active, "processed": counts.processed, "pid": ctx.pid}


def stats(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Statistics: tasks per name, pool, prefetch, broker, uptime, pid, rusage."""
    counts = ctx.worker.counts()
    reply = {
        "total": dict(ctx.worker.totals()),
        "pid": ctx.pid,
        "clock": str(ctx.clock.value),
        "uptime": round(time.time() - ctx.started),
        "pool": shapes.pool_info(ctx.worker.pool()),
        "broker": shapes.broker_info(ctx.settings.broker),
        "prefetch_count": ctx.worker.prefetch_count(),
        "rusage": shapes.rusage(),
        "consuming": bool(ctx.worker.consuming()),
        "active": counts.active,
        "processed": counts.processed,
    }
    if ctx.events is not None:
        sent = ctx.events.counts()
        reply["events"] = {"task_events": ctx.events.task_events, "sent": sent.sent, "dropped": sent.dropped}
    return reply


def registered(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Registered tasks, with their exchange, routing key and rate limit."""
    items = args.get("taskinfoitems") or shapes.DEFAULT_TASK_INFO_ITEMS
    if not isinstance(items, (list, tuple)):
        items = shapes.DEFAULT_TASK_INFO_ITEMS
    items = [i for i in items if isinstance(i, str)]
    return [shapes.registered_line(task, items) for task in sorted(ctx.worker.registered(), key=lambda t: t.name)]


def active(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Tasks running now."""
    safe = bool(args.get("safe"))
    return [shapes.json_safe(shapes.request_info(r, hostname=ctx.hostname, safe=safe)) for r in ctx.worker.active()]


def reserved(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Tasks received and waiting for a pool slot."""
    return [shapes.json_safe(shapes.request_info(r, hostname=ctx.hostname)) for r in ctx.worker.reserved()]


def scheduled(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Tasks held until an eta (amqtask parks those in the broker: normally none)."""
    return [shapes.json_safe(shapes.scheduled_info(r, hostname=ctx.hostname)) for r in ctx.worker.scheduled()]


def revoked(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Revoked task ids this worker honours."""
    return ctx.revoked.ids()


def active_queues(ctx: Context, args: Mapping[str, Any]) -> Any:
    """The queues being consumed, in kombu's Queue.as_dict shape."""
    return [shapes.queue_dict(ctx.settings.topology, name) for name in ctx.worker.queues()]


def conf(ctx: Context, args: Mapping[str, Any]) -> Any:
    """The worker's configuration (the password is never included)."""
    settings = ctx.settings
    worker = settings.worker
    reply: dict[str, Any] = {
        "broker_url": settings.broker.urls[0].redacted(),
        "config_source": settings.source,
        "task_default_exchange": settings.defaults.exchange,
        "task_default_routing_key": settings.defaults.routing_key,
        "task_default_queue": settings.defaults.queue,
        "task_serializer": settings.defaults.serializer,
        "accept_content": list(settings.broker.accept_content),
        "worker_pool": worker.pool,
        "worker_concurrency": worker.concurrency,
        "worker_prefetch_multiplier": worker.prefetch_multiplier,
        "worker_control": worker.monitor.control,
        "worker_send_task_events": ctx.events.task_events if ctx.events is not None else False,
        "worker_heartbeat_interval": worker.monitor.heartbeat_interval,
    }
    reply.update({str(k): v for k, v in ctx.worker.config().items()})
    return shapes.json_safe(reply)


def clock(ctx: Context, args: Mapping[str, Any]) -> Any:
    """The node's logical clock."""
    return {"clock": ctx.clock.value}


def query_task(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Where tasks are in this worker: {id: [active|reserved|scheduled, info]}."""
    wanted = set(valid_task_ids(args.get("ids")))
    found: dict[str, Any] = {}
    for state, requests in (("active", ctx.worker.active()), ("reserved", ctx.worker.reserved()),
                            ("scheduled", ctx.worker.scheduled())):
        for request in requests:
            if request.id in wanted and request.id not in found:
                found[request.id] = [state, shapes.json_safe(shapes.request_info(request, hostname=ctx.hostname))]
    return found


def hello(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Celery's mingle: a starting Celery worker sends its revoked ids and gets ours.
    Theirs are merged as Celery 5.7 merges them: the ids only, stamped now."""
    if args.get("from_node") == ctx.hostname:
        return Answer(None, None)  # our own hello: Celery answers itself with nothing too
    offered = _offered_revocations(args.get("revoked"))
    added = _remember_revoked(ctx, offered)
    note = f"merged {len(added)} revoked id(s) from {_node_shown(args)}" if added else None
    return Answer(_mingle_reply(ctx), note)


def hello_without_merging(ctx: Context, args: Mapping[str, Any]) -> Any:
    """`hello` under `worker.control: read-only`: our revoked ids go out, theirs are
    not merged (a revocation is a change, whoever offers it)."""
    if args.get("from_node") == ctx.hostname:
        return Answer(None, None)
    offered = _offered_revocations(args.get("revoked"))
    note = (f"{len(offered)} revoked id(s) offered by {_node_shown(args)} not merged: worker.control is read-only"
            if offered else None)
    return Answer(_mingle_reply(ctx), note)


def _mingle_reply(ctx: Context) -> dict[str, Any]:
    # The ids only, oldest first, as Celery 5.7 sends them: a receiver whose set is
    # full then evicts our oldest first.
    return {"revoked": ctx.revoked.ids(), "clock": ctx.clock.forward()}


def _offered_revocations(value: Any) -> list[str]:
    """The valid ids of a hello's `revoked` (a list, or a mapping whose keys are the
    ids), at most as many as the set holds: the newest, which Celery would keep."""
    items = list(value) if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return valid_task_ids(items[-REVOKES_MAX:])


def _node_shown(args: Mapping[str, Any]) -> str:
    return bounded_repr(args.get("from_node"), 80)


# -- control ------------------------------------------------------------------------------
def revoke(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Revoke tasks by id: they will not run here, now or when they arrive later;
    with terminate, running ones are stopped with `signal` (prefork)."""
    ids = valid_task_ids(args.get("task_id"))
    if not ids:
        return nok("no valid task id given")
    if not args.get("persisted"):
        _remember_revoked(ctx, ids)
    else:
        ctx.revoked.add(ids)
    if _truthy(args.get("terminate")):
        signum = signal_number(args.get("signal"))
        terminated = list(ctx.worker.terminate(ids, signum))
        if ctx.events is not None:
            for task_id in terminated:
                ctx.events.task_revoked(uuid=task_id, terminated=True, signum=signum)
        return ok(f"terminate: {', '.join(terminated)}" if terminated else "terminate: tasks unknown")
    return ok(f"tasks {', '.join(ids)} flagged as revoked")


def terminate(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Revoke and stop running tasks with a signal (revoke with terminate=True)."""
    return revoke(ctx, {**args, "terminate": True})


def rate_limit(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Change a task type's rate limit ('10/s', '5/m', '100/h'; empty or 0: none)."""
    name, rate = args.get("task_name"), args.get("rate_limit")
    if not isinstance(name, str):
        return nok("task_name must be a string")
    if rate in (None, "", 0, "0"):
        rate = None
    elif not isinstance(rate, (str, int, float)) or isinstance(rate, bool) or not _RATE.match(str(rate)):
        return nok(f"Invalid rate limit string: {str(rate)[:50]!r}")
    ctx.worker.set_rate_limit(name, None if rate is None else str(rate).replace(" ", ""))
    return ok("rate limit disabled successfully" if rate is None else "new rate limit set successfully")


def time_limit(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Change a task type's soft and hard time limits (seconds; none: no limit)."""
    name = args.get("task_name")
    if not isinstance(name, str):
        return nok("task_name must be a string")
    soft, hard = _seconds_or_none(args.get("soft")), _seconds_or_none(args.get("hard"))
    if soft is False or hard is False:
        return nok("time limits must be positive numbers of seconds")
    ctx.worker.set_time_limit(name, soft, hard)
    return ok("time limits set successfully")


def add_consumer(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Start consuming a queue."""
    queue = args.get("queue")
    if not isinstance(queue, str) or not queue:
        return nok("queue must be a queue name")
    ctx.worker.add_consumer(queue, exchange=_str_or_none(args.get("exchange")),
                            exchange_type=_str_or_none(args.get("exchange_type")),
                            routing_key=_str_or_none(args.get("routing_key")))
    return ok(f"add consumer {queue}")


def cancel_consumer(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Stop consuming a queue."""
    queue = args.get("queue")
    if not isinstance(queue, str) or not queue:
        return nok("queue must be a queue name")
    ctx.worker.cancel_consumer(queue)
    return ok(f"no longer consuming from {queue}")


def shutdown(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Warm shutdown: stop consuming, finish running tasks, exit."""
    ctx.worker.shutdown()
    return ok("shutting down")


def heartbeat(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Send a worker-heartbeat event now."""
    if ctx.heartbeat is not None:
        ctx.heartbeat.reset()
    return ok("heartbeat requested")


def enable_events(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Send task events."""
    if ctx.events is None:
        return nok("event dispatcher unavailable")
    if ctx.events.enable_task_events():
        log.info("task events enabled by remote")
        return ok("task events enabled")
    return ok("task events already enabled")


def disable_events(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Stop sending task events."""
    if ctx.events is None:
        return nok("event dispatcher unavailable")
    if ctx.events.disable_task_events():
        log.info("task events disabled by remote")
        return ok("task events disabled")
    return ok("task events already disabled")


def pool_grow(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Add n processes or threads to the pool."""
    n = _count(args.get("n", 1))
    if n is None:
        return nok("n must be a positive integer")
    ctx.worker.pool_grow(n)
    return ok("pool will grow")


def pool_shrink(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Remove n processes or threads from the pool."""
    n = _count(args.get("n", 1))
    if n is None:
        return nok("n must be a positive integer")
    ctx.worker.pool_shrink(n)
    return ok("pool will shrink")


def autoscale(ctx: Context, args: Mapping[str, Any]) -> Any:
    """Change the autoscaler's max and min pool size (a worker started with --autoscale)."""
    given = {key: args.get(key) for key in ("max", "min") if args.get(key) is not None}
    bounds = {key: _count(value, least=1 if key == "max" else 0) for key, value in given.items()}
    if None in bounds.values():
        return nok("max and min must be whole numbers of pool slots (max at least 1)")
    high, low = ctx.worker.autoscale(bounds.get("max"), bounds.get("min"))
    return ok(f"autoscale now max={high} min={low}")


# -- helpers ------------------------------------------------------------------------------
def _remember_revoked(ctx: Context, ids: Sequence[str]) -> list[str]:
    """Add `ids` to the revoked set and record the new ones where they outlive a
    restart; returns the new ones."""
    added = ctx.revoked.add(ids)
    if added and ctx.persist_revoked is not None:
        ctx.persist_revoked(added)
    return added


def signal_number(value: Any) -> int:
    """Celery's signal argument: 'TERM', 'SIGKILL', 'kill', '9' or 9 (default SIGTERM)."""
    if value is None or value == "":
        return int(signals.SIGTERM)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        member = getattr(signals.Signals, name, None) if name.isidentifier() else None
        if member is None:
            raise ControlRefused(f"unknown signal {value[:20]!r}")
        return int(member)
    else:
        raise ControlRefused("signal must be a name or a number")
    if number not in {int(s) for s in signals.Signals}:
        raise ControlRefused(f"unknown signal {number}")
    return number


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _seconds_or_none(value: Any) -> float | None | bool:
    """A positive number of seconds, None for "no limit", False for garbage."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        return False
    return number


def _count(value: Any, *, least: int = 1) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if least <= n <= 10_000 and not isinstance(value, bool) else None


def _command(kind: str, handler: Handler, read_only: Handler | None = None) -> Command:
    return Command(handler.__name__, kind, handler, (handler.__doc__ or "").strip().split("\n")[0], read_only)


_INSPECTIONS = (ping, stats, registered, active, reserved, scheduled, revoked, active_queues, conf, clock,
                query_task)
_CONTROLS = (revoke, terminate, rate_limit, time_limit, add_consumer, cancel_consumer, shutdown, heartbeat,
             enable_events, disable_events, pool_grow, pool_shrink, autoscale)
COMMANDS: Mapping[str, Command] = MappingProxyType(
    {c.name: c for c in [_command(INSPECT, h) for h in _INSPECTIONS] + [_command(CONTROL, h) for h in _CONTROLS]
     + [_command(CONTROL, hello, read_only=hello_without_merging)]})
# Celery's older names for the same inspections.
ALIASES: Mapping[str, str] = MappingProxyType({
    "dump_conf": "conf", "dump_schedule": "scheduled", "dump_reserved": "reserved", "dump_active": "active",
    "dump_revoked": "revoked", "dump_tasks": "registered",
})


def handler_for(command: Command, mode: str) -> Handler | None:
    """What runs for `command` under `worker.control: mode`; None: it is refused."""
    if mode == "all":
        return command.handler
    if mode == "read-only":
        if command.kind == INSPECT or command.name in HARMLESS_CONTROLS:
            return command.handler
        return command.read_only
    return None


def allowed(command: Command, mode: str) -> bool:
    """Whether `worker.control: mode` lets `command` run (in full or read-only)."""
    return handler_for(command, mode) is not None
