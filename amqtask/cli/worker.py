"""`amqtask worker`: consume and run tasks."""
from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from ..worker.sizing import AUTO, Sizing, cpus, size
from . import main
from .common import (EXIT_USAGE, LogLevel, app_option, broker_option, config_option, fail, global_options,
                     handle_errors, load, names, result_backend_option, unused_global_notes, with_overrides)
from .control import monitor_options, monitor_settings


def _or_global_workdir(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--workdir after the subcommand (made absolute: the daemon changes to it again after
    the worker has), else the global one (already changed to)."""
    import os

    return os.path.abspath(value) if value else global_options().workdir


def _or_global_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    return value or global_options().quiet


# Celery's beat scheduler class: amqtask's beat does what it does (state in RabbitMQ instead of a file).
CELERY_DEFAULT_SCHEDULER = "celery.beat:PersistentScheduler"


class PoolType(click.Choice):
    """-P: amqtask's pools, Celery's `processes` alias for prefork; eventlet and gevent
    are refused with what to use instead."""

    ALIASES = {"processes": "prefork"}
    UNAVAILABLE = ("eventlet", "gevent")

    def __init__(self) -> None:
        super().__init__(["prefork", "threads", "asyncio", "solo", *self.ALIASES, *self.UNAVAILABLE])

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        name = str(super().convert(value, param, ctx))
        if name in self.UNAVAILABLE:
            self.fail(f"amqtask has no {name} pool: for I/O-bound tasks use -P threads (a thread per slot, "
                      "so -c can be large) or -P asyncio with `async def` tasks", param, ctx)
        return self.ALIASES.get(name, name)


class Concurrency(click.ParamType):
    """-c as Celery 5.7 takes it: a number of slots, 0 for the configured default, or
    `auto` (returned as is)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if number < 0:
            self.fail(f"must be a whole number of pool slots or 'auto', not {value!r}", param, ctx)
        return number


class ProcessCount(click.ParamType):
    """--processes: a number of processes, or `auto` (one per CPU)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            self.fail(f"must be a whole number of processes (1 or more) or 'auto', not {value!r}", param, ctx)
        return number


@main.command(context_settings={"show_default": True})
@app_option(required=True, help="Module defining the App and its tasks.")
@broker_option
@result_backend_option
@click.option("-Q", "--queues", default=None, metavar="Q1,Q2",
              help="Queues to consume. [default: worker.queues, else every queue in routing.yaml]")
@click.option("-X", "--exclude-queues", default=None, metavar="Q1,Q2", help="Queues not to consume.")
@click.option("--create-missing-queues", is_flag=True,
              help="Consume -Q queues routing.yaml does not declare (as plain durable queues) instead of refusing.")
@click.option("-c", "--concurrency", type=Concurrency(), default=None,
              help="Task slots in all, spread over the processes; 0: the default; auto: the CPUs this process may "
                   "run on (its affinity mask). [default: worker.concurrency, else 4 per CPU for threads and "
                   "asyncio, 1 per CPU for prefork, 1 for solo]")
@click.option("--processes", type=ProcessCount(), default=None, metavar="N|auto",
              help="Consuming processes (each its own connection, prefetch window and pool; one process handles "
                   "messages on one core at most); auto: one per CPU, at most one per slot. "
                   "[default: worker.processes, else auto; solo and --autoscale: 1]")
@click.option("-P", "--pool", type=PoolType(), default=None,
              help="How each process runs tasks: threads (tasks in threads of the consuming process), prefork "
                   "(each task in a forked child, Celery's default; also 'processes'), asyncio (async def "
                   "tasks on the event loop, plain functions in threads), solo (one at a time). "
                   "[default: worker.pool, else threads]")
@click.option("--prefetch-multiplier", type=click.IntRange(0), default=None,
              help="Unacked messages per consumer = concurrency x this; 0 = unlimited. [default: 4]")
@click.option("-O", "--optimization", "optimization", type=click.Choice(["fair", "default", "fast"]), default=None,
              help="Accepted for Celery compatibility: amqtask hands tasks only to idle slots, whatever the "
                   "profile. [default: fair]")
@click.option("-n", "--hostname", default=None, metavar="NAME",
              help="Node name, as Celery's: %h host, %n its first label, %d its domain, %i/%I process index "
                   "(with --processes), %p pid. [default: amqtask@%h]")
@click.option("-l", "--loglevel", type=LogLevel(), default=None,
              help="INFO logs a line per task received and finished, as Celery does; FATAL is CRITICAL. "
                   "[default: worker.loglevel]")
@click.option("-f", "--logfile", default=None, metavar="PATH", help="Log to this file instead of stderr.")
@click.option("--max-tasks-per-child", "--maxtasksperchild", "max_tasks_per_child", type=click.IntRange(1),
              default=None, help="prefork: recycle after N tasks.")
@click.option("--max-memory-per-child", "--maxmemperchild", "max_memory_per_child", type=click.IntRange(1),
              default=None, metavar="KIB",
              help="prefork: recycle a child whose resident memory exceeds this after a task.")
@click.option("--time-limit", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Hard time limit for every task without its own.")
@click.option("--soft-time-limit", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Soft time limit (SoftTimeLimitExceeded inside the task).")
@click.option("--purge", "--discard", "purge", is_flag=True,
              help="Delete waiting messages from the consumed queues before starting (--discard: Celery's alias).")
@click.option("--autoscale", default=None, metavar="MAX,MIN",
              help="Grow the pool (prefork or threads) with the work in hand up to MAX slots; shrink back to MIN "
                   "after 30 s without growth.")
@click.option("-B", "--beat", is_flag=True,
              help="Also run the periodic task scheduler (any number may run: one leads, see `amqtask beat`).")
@click.option("-I", "--include", default=None, metavar="MOD1,MOD2", help="Also import these modules (tasks).")
@click.option("--pidfile", default=None, metavar="PATH",
              help="Write the pid here; refuse to start while the pid it names is alive.")
@click.option("-D", "--detach", is_flag=True, help="Run in the background (daemon). Under systemd, do not.")
@click.option("--workdir", default=None, metavar="DIR", callback=_or_global_workdir,
              help="Change to this directory before loading the App (as Celery's global --workdir); with "
                   "--detach, the daemon stays there.")
@click.option("--umask", default="0", metavar="OCTAL", help="With --detach: the daemon's umask.")
@click.option("--uid", default=None, metavar="USER", help="As root: run as this user (name or number).")
@click.option("--gid", default=None, metavar="GROUP", help="As root: run as this group (name or number).")
@click.option("-q", "--quiet", is_flag=True, callback=_or_global_quiet, help="Print no start-up banner.")
@click.option("-C", "--no-color", is_flag=True, help="Accepted for Celery compatibility (amqtask prints no colour).")
@click.option("--loader", default=None, metavar="CLASS", help="Accepted for Celery compatibility (no loaders).")
@click.option("--skip-checks", is_flag=True, help="Accepted for Celery compatibility (no Django checks).")
@monitor_options
@click.option("--task-events", "task_events_alias", is_flag=True, help="The same as -E (Celery's spelling).")
@click.option("--without-heartbeat", is_flag=True, help="Send no worker events: online, heartbeat, offline "
                                                         "(as --heartbeat-interval 0).")
@click.option("--without-gossip", is_flag=True, help="Accepted for Celery compatibility (nothing to turn off).")
@click.option("--without-mingle", is_flag=True, help="Accepted for Celery compatibility (nothing to turn off).")
@click.option("-S", "--statedb", default=None, metavar="PATH",
              help="Accepted for Celery compatibility: revoked task ids are kept in a RabbitMQ stream "
                   "(worker.revoked_stream) that every worker reads, not in a file.")
@click.option("-s", "--schedule-filename", "--schedule", "schedule_file", default=None, metavar="FILE",
              help="Accepted for Celery compatibility: beat state lives in RabbitMQ.")
@click.option("--scheduler", default=None, metavar="CLASS",
              help="Accepted for Celery compatibility: -B runs amqtask's beat (routing.yaml's schedules and "
                   "add_periodic_task's); another scheduler's schedules do not run.")
@click.option("--pool-start-method", type=click.Choice(["fork", "spawn"]), default=None,
              help="Accepted for Celery compatibility: prefork children are forked.")
@click.option("--disable-prefetch", is_flag=True,
              help="Accepted for Celery compatibility (Celery supports it on Redis only): the window is "
                   "--prefetch-multiplier.")
@click.option("--executable", default=None, metavar="PATH",
              help="Accepted for Celery compatibility: --detach forks this process; nothing is executed.")
@config_option
@handle_errors
def worker(app_spec: str, broker_url: str | None, result_backend: str | None, queues: str | None,
           exclude_queues: str | None, create_missing_queues: bool, concurrency: int | str | None,
           processes: int | None, pool: str | None, prefetch_multiplier: int | None, optimization: str | None,
           hostname: str | None, loglevel: str | None, logfile: str | None, max_tasks_per_child: int | None,
           max_memory_per_child: int | None, time_limit: float | None, soft_time_limit: float | None, purge: bool,
           autoscale: str | None, beat: bool, include: str | None, pidfile: str | None, detach: bool,
           workdir: str | None, umask: str, uid: str | None, gid: str | None, quiet: bool, no_color: bool,
           loader: str | None, skip_checks: bool,
           task_events: bool | None, heartbeat_interval: float | None, metrics_port: int | None,
           control_mode: str | None, task_events_alias: bool, without_heartbeat: bool, without_gossip: bool,
           without_mingle: bool, statedb: str | None, schedule_file: str | None, scheduler: str | None,
           pool_start_method: str | None, disable_prefetch: bool, executable: str | None,
           config_path: str | None) -> None:
    """Consume tasks and run them.

    Messages are acknowledged after the task finishes (late acks), at most
    concurrency x prefetch-multiplier are unacknowledged per queue, and delayed
    tasks wait in the broker, not here. SIGTERM or Ctrl-C once: finish running
    tasks and exit; twice: stop now (unacknowledged messages return to their queues).
    With --processes N, each of N processes is such a worker; signals sent to
    this command reach them all, and a process that dies is replaced.
    """
    import logging
    import os

    from ..control import nodename
    from ..worker import daemon
    from ..worker.worker import WorkerConfig

    if workdir:
        os.chdir(workdir)  # before the App's module is imported, which may be relative to it
    app = _load_worker_app(app_spec, config_path, include, broker_url, result_backend)
    settings = app.settings
    w = settings.worker
    chosen_pool = pool or w.pool
    sizing = size(chosen_pool, concurrency=_concurrency(concurrency, w.concurrency),
                  processes=processes or w.processes, cpu_count=cpus(), autoscale=autoscale is not None)
    config = WorkerConfig(
        queues=tuple(_queues(settings, queues, exclude_queues, create_missing_queues)),
        concurrency=sizing.most_slots,
        pool=chosen_pool,
        prefetch_multiplier=w.prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier,
        optimization="fair" if optimization else w.optimization,
        hostname=nodename.expand(hostname or w.name),
        max_tasks_per_child=max_tasks_per_child or w.max_tasks_per_child,
        max_memory_per_child=max_memory_per_child or w.max_memory_per_child,
        time_limit=time_limit or w.time_limit,
        soft_time_limit=soft_time_limit or w.soft_time_limit,
        purge=purge,
        beat=beat,
        autoscale=_autoscale(autoscale, chosen_pool),
    )
    if beat:
        from ..beat import check_schedules

        check_schedules(app)  # a broken schedule: exit 2 before anything starts
    monitor = monitor_settings(w.monitor, task_events=True if task_events_alias else task_events,
                               metrics_port=metrics_port, control_mode=control_mode,
                               heartbeat_interval=0.0 if without_heartbeat else heartbeat_interval)
    # Celery 4 took its global options after the subcommand too: said once, wherever given.
    given_here = unused_global_notes(no_color=no_color, loader=loader, skip_checks=skip_checks, quiet=False)
    global_notes = dict.fromkeys((*global_options().notes, *given_here))
    notes = [*((logging.INFO, note) for note in global_notes), *_unused_flag_notes(
        statedb=statedb, revoked_stream=monitor.revoked_stream, without_gossip=without_gossip,
        without_mingle=without_mingle, optimization=optimization, schedule_file=schedule_file, scheduler=scheduler,
        pool_start_method=pool_start_method, disable_prefetch=disable_prefetch, executable=executable)]
    # Everything that can refuse does so in the foreground, before detaching.
    if logfile:
        daemon.check_writable(logfile)
    if pidfile:
        daemon.Pidfile.acquire(pidfile).release()
    daemon.drop_privileges(uid, gid)
    if detach:
        daemon.detach(workdir=workdir, umask=int(umask, 8))
    elif not quiet:
        click.echo(_banner(app, config, sizing))
    held = daemon.Pidfile.acquire(pidfile) if pidfile else None
    _start_logging(loglevel or w.loglevel, logfile)
    for level, note in notes:
        logging.getLogger("amqtask.worker").log(level, "%s", note)
    try:
        code = _run_workers(app, config, monitor, sizing, hostname or w.name)
    finally:
        if held is not None:
            held.release()
    if code != 0:
        # Cold shutdown: task threads cannot be stopped, and the interpreter would wait
        # for them at exit. The connection is closed, so their messages are requeued.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _load_worker_app(app_spec: str, config_path: str | None, include: str | None, broker_url: str | None,
                     result_backend: str | None) -> Any:
    """The App -A names, with --config, -b and --result-backend over its settings and
    the -I modules imported."""
    from ..app import load_app

    app = load_app(app_spec)
    settings = load(config_path) if config_path is not None else app.settings
    if config_path is not None or broker_url or result_backend:
        app.configure(with_overrides(settings, broker=broker_url, result_backend=result_backend))
    if include:
        app.imports = tuple(dict.fromkeys((*app.imports, *names(include))))
        app.import_default_modules()
    return app


def _start_logging(level: str, logfile: str | None) -> None:
    import logging

    logging.basicConfig(level=level.upper(), filename=logfile,
                        format="[%(asctime)s %(levelname)s/%(processName)s] %(message)s")
    # The monitor link's client library narrates every connection step and logs its own
    # tracebacks; amqtask says what matters in one line of its own.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def _unused_flag_notes(*, statedb: str | None, revoked_stream: str | None, without_gossip: bool,
                       without_mingle: bool, optimization: str | None, schedule_file: str | None,
                       scheduler: str | None, pool_start_method: str | None, disable_prefetch: bool,
                       executable: str | None) -> list[tuple[int, str]]:
    """A log line for each Celery flag given that amqtask accepts with nothing to do, or
    does in its own way; WARNING where something the flag asked for will not happen."""
    import logging

    info, warning = logging.INFO, logging.WARNING
    notes: list[tuple[int, str]] = []
    if statedb:
        where = (f"in the RabbitMQ stream {revoked_stream!r}, which every worker reads at start (3 hours)"
                 if revoked_stream else "in memory only (worker.revoked_stream is off)")
        notes.append((info, f"-S/--statedb {statedb}: revoked task ids are kept {where}, not in a file; "
                            "the file is not used"))
    if without_gossip:
        notes.append((info, "--without-gossip: amqtask workers do not gossip; nothing to turn off"))
    if without_mingle:
        notes.append((info, "--without-mingle: amqtask workers do not mingle at start-up; nothing to turn off"))
    if optimization and optimization != "fair":
        notes.append((info, f"-O {optimization}: amqtask hands a task only to an idle slot (fair) whatever the "
                            "profile; ignored"))
    if schedule_file:
        notes.append((info, f"-s/--schedule-filename {schedule_file}: the beat keeps its state in RabbitMQ, not in "
                            "a file; ignored"))
    if scheduler == CELERY_DEFAULT_SCHEDULER:
        notes.append((info, f"--scheduler {scheduler}: amqtask's beat keeps its state in RabbitMQ; ignored"))
    elif scheduler:
        notes.append((warning, f"--scheduler {scheduler}: not used; amqtask's beat runs routing.yaml's schedules "
                               "and add_periodic_task's, so schedules kept by this scheduler do not run"))
    if pool_start_method == "spawn":
        notes.append((info, "--pool-start-method spawn: amqtask's prefork children are forked; ignored"))
    if disable_prefetch:
        notes.append((info, "--disable-prefetch: Celery supports it on Redis only; amqtask's window is "
                            "--prefetch-multiplier (1: one message per slot); ignored"))
    if executable:
        notes.append((info, f"--executable {executable}: --detach forks this process, nothing is executed; "
                            "ignored"))
    return notes


def _concurrency(given: int | str | None, configured: int | None) -> int | None:
    """-c N; 0 or absent: worker.concurrency, else None (the pool's default, see
    worker/sizing.py); auto: the CPUs this process may run on (Celery 5.7's `-c auto`,
    without its cgroup quota)."""
    if given == "auto":
        return cpus()
    return int(given or 0) or configured


def _run_workers(app: Any, config: Any, monitor: Any, sizing: Sizing, name_template: str | None) -> int:
    """Run one worker here, or `count` under a supervisor (each with its own node
    name); with a metrics port, serve Prometheus metrics for them all."""
    import dataclasses
    import logging

    from .. import metrics as prom
    from ..control import nodename
    from ..worker.processes import SHUTDOWN_SIGNAL, supervise
    from ..worker.registry import RunningRegistry
    from ..worker.worker import Worker, run

    count = sizing.processes
    if not sizing.supervised:
        meter = prom.Metrics() if monitor.metrics_port else None
        server = prom.serve(monitor.metrics_port, registry=meter.registry) if meter else None
        try:
            return run(Worker(app, config, monitor=monitor, metrics=meter))
        finally:
            if server is not None:
                server.close()
    directory = prom.prepare_multiprocess() if monitor.metrics_port else None
    server = prom.serve(monitor.metrics_port, multiprocess_dir=directory) if directory else None
    template = nodename.per_process(name_template, count)
    registry = RunningRegistry(count, slots=config.concurrency + 4)  # config.concurrency: the most slots of one

    def run_one(index: int) -> int:
        if server is not None:
            server.close_inherited()  # the supervisor serves; its listening socket is not this process's
        registry.enter(index - 1)
        named = dataclasses.replace(config, hostname=nodename.expand(template, index=index),
                                    concurrency=sizing.slots(index))
        meter = prom.Metrics() if directory else None
        worker = Worker(app, named, monitor=monitor, metrics=meter, registry=registry)
        return run(worker, signals=(SHUTDOWN_SIGNAL,))

    def exited(index: int, pid: int, how: str, replaced: bool) -> None:
        lost = registry.process_died(index - 1, pid, how)
        if lost:
            logging.getLogger("amqtask.worker").error(
                "worker process %s %s while running %s; redelivered, each runs once more, and fails with "
                "WorkerLostError if it was running when another process died before", pid, how, ", ".join(lost))
        if directory is not None:
            prom.process_died(pid, directory)
            if replaced:
                prom.Metrics().pool_child_replaced()

    sys.stdout.flush()
    try:
        return supervise(count, run_one, on_exit=exited, had_started=lambda index: registry.was_ready(index - 1))
    finally:
        if server is not None:
            server.close()
        if directory is not None:
            prom.cleanup(directory)


def _autoscale(text: str | None, pool: str) -> tuple[int, int] | None:
    """Celery's --autoscale: "MAX,MIN" in either order, or "N" for N,0 (the pool
    keeps at least one slot)."""
    if text is None:
        return None
    try:
        numbers = sorted((int(part) for part in text.split(",")), reverse=True)
    except ValueError:
        fail(f"--autoscale takes MAX,MIN (whole numbers), not {text!r}", EXIT_USAGE)
    if len(numbers) == 1:
        numbers.append(0)
    if len(numbers) != 2 or numbers[0] < 1:
        fail(f"--autoscale takes MAX,MIN with MAX at least 1, not {text!r}", EXIT_USAGE)
    if pool not in ("prefork", "threads"):
        fail(f"--autoscale needs a pool that can change size (prefork or threads), not {pool}", EXIT_USAGE)
    return numbers[0], max(1, numbers[1])


def _queues(settings: Any, queues: str | None, exclude: str | None, create_missing: bool) -> list[str]:
    """The queues to consume: -Q, else worker.queues, else every queue; minus -X. A -Q
    queue routing.yaml does not declare is refused (a typo would otherwise consume an
    empty new queue forever), unless --create-missing-queues."""
    import difflib

    w = settings.worker
    chosen = names(queues) or list(w.queues) or list(settings.topology.queues)
    excluded = set(names(exclude) or w.exclude_queues)
    chosen = [q for q in chosen if q not in excluded]
    if not chosen:
        fail("no queues to consume: name some with -Q or declare them in routing.yaml", EXIT_USAGE)
    for name in chosen:
        if name in settings.topology.queues:
            continue
        if create_missing:
            click.echo(f"warning: queue {name!r} is not in {settings.source}; declaring it as a plain durable "
                       "queue", err=True)
            continue
        close = difflib.get_close_matches(name, list(settings.topology.queues), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        fail(f"queue {name!r} is not declared in {settings.source}{hint} (declare it under 'queues:', or pass "
             "--create-missing-queues)", EXIT_USAGE)
    return chosen


def _banner(app: Any, config: Any, sizing: Sizing) -> str:
    settings = app.settings
    topology = settings.topology
    several = sizing.processes > 1
    each = " in each process" if several else ""
    slots = f"{config.concurrency} slots{each}" + (f" ({sizing.concurrency} in all)" if several else "")
    supervised = ", under a supervisor that replaces one that dies" if sizing.supervised else ""
    lines = [
        f"amqtask {__version__} worker {config.hostname}",
        f"  broker:      {', '.join(u.redacted() for u in settings.broker.urls)}",
        f"  processes:   {sizing.processes}, each with its own connection{supervised}",
        f"  pool:        {config.pool}, {slots}",
        f"  prefetch:    {config.prefetch or 'unlimited'} per queue{each} (slots x {config.prefetch_multiplier}), "
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

