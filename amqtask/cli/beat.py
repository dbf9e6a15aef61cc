"""`amqtask beat` (run the scheduler) and `amqtask schedules` (what runs when, who leads)."""
from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click

from ..errors import BrokerError, ScheduleError
from ..topology.loader import check_file, format_problems
from . import main
from .common import (EXIT_RUNTIME, EXIT_USAGE, LogLevel, app_option as app_option_for, config_option, fail,
                     global_options, handle_errors, load, with_overrides)

app_option = app_option_for(required=False, help="Module defining the App, its tasks and add_periodic_task "
                                                 "schedules. Without it, tasks are sent by name.")


def _load_app(app_spec: str | None, config_path: str | None) -> Any:
    """The App, with routing.yaml checked (schedules included, task names against the
    app's tasks): exit 2 on any error."""
    from ..app import App, load_app

    if app_spec is None:
        return App("amqtask", settings=load(config_path))
    app = load_app(app_spec)
    given = global_options()
    if config_path is not None:
        app.configure(load(config_path))
    elif given.broker or given.result_backend:
        app.configure(with_overrides(app.settings, broker=given.broker, result_backend=given.result_backend))
    source = app.settings.source
    if source != "<memory>":
        result = check_file(source, tasks=app.tasks)
        if result.problems:
            click.echo(format_problems(result.problems), err=True)
        if result.settings is None:
            sys.exit(EXIT_USAGE)
    return app


@main.command(context_settings={"show_default": True})
@app_option
@click.option("-n", "--name", default=None, help="This beat's name in logs and status. [default: host:pid]")
@click.option("-l", "--loglevel", default="INFO", type=LogLevel(), help="FATAL is CRITICAL, as in Celery.")
@config_option
@handle_errors
def beat(app_spec: str | None, name: str | None, loglevel: str, config_path: str | None) -> None:
    """Run the periodic task scheduler.

    Start as many as you like (on any hosts): the beats of one group (routing.yaml
    `beat.group`) elect a single leader through RabbitMQ; the others stand by and
    take over within seconds when it stops or dies. Each run instant is sent once,
    with task id uuid5(schedule name, instant) and header x-amqtask-schedule.
    Refuses to start (exit 2) when a schedule is invalid. SIGTERM or Ctrl-C stops it;
    a leader's state stays in RabbitMQ for the next one.
    """
    import asyncio
    import logging
    import signal

    from ..beat.runner import check_schedules, run_beat

    app = _load_app(app_spec, config_path)
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s %(levelname)s/beat] %(message)s")
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLogger().level))
    for note in global_options().notes:
        logging.getLogger("amqtask.beat").info("%s", note)
    try:
        entries = check_schedules(app)
    except ScheduleError as exc:
        fail(str(exc), EXIT_USAGE)
    settings = app.settings
    if not global_options().quiet:
        _banner(entries, settings)
    sys.stdout.flush()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_beat(app, stop=stop, name=name)

    asyncio.run(serve())


def _banner(entries: Any, settings: Any) -> None:
    click.echo(f"amqtask beat: {len(entries)} schedules, group {settings.beat.group!r}, timezone "
               f"{settings.timezone}, broker {', '.join(u.redacted() for u in settings.broker.urls)}")
    for entry in entries:
        click.echo(f"  {entry.name}: {entry.task} {entry.schedule.describe()} (missed: {entry.missed})")


@main.command()
@app_option
@click.option("--count", default=3, show_default=True, type=click.IntRange(1, 100),
              help="How many next run times to show.")
@config_option
@handle_errors
def schedules(app_spec: str | None, count: int, config_path: str | None) -> None:
    """List every schedule: its next run times (in the configured timezone and UTC),
    its last run, and which beat leads.

    The state is read from RabbitMQ without disturbing the leader. Exit 1 when the
    broker cannot be reached (the next run times are still printed).
    """
    from ..amqp.beat_lock import read_status
    from ..beat.entries import schedule_entries
    from ..beat.state import BeatState, StateError, format_instant
    from ..beat.timing import upcoming
    from ..schedules import zone

    app = _load_app(app_spec, config_path)
    settings = app.settings
    try:
        entries = schedule_entries(app)
    except ScheduleError as exc:
        fail(str(exc), EXIT_USAGE)
    tz = zone(settings.timezone)
    now = dt.datetime.now(dt.timezone.utc)
    state, problem, beats = None, None, 0
    try:
        read = read_status(settings.broker, settings.beat.group)
        beats = read.beats
        states = []
        for body in read.bodies:
            try:
                states.append(BeatState.decode(body))
            except StateError:
                pass
        state = max(states, key=lambda s: s.seq) if states else None
    except BrokerError as exc:
        problem = str(exc)

    def shown(instant: dt.datetime | None) -> str:
        if instant is None:
            return "never"
        return f"{instant.astimezone(tz).strftime('%Y-%m-%d %H:%M:%S %Z')}  ({format_instant(instant)})"

    click.echo(f"timezone: {settings.timezone}    beat group: {settings.beat.group}")
    if problem:
        click.echo(f"leader:   unknown ({problem})")
    elif state is None:
        click.echo(f"leader:   none yet ({'a beat is connected' if beats else 'no beat is running'}, "
                   f"no state recorded)")
    else:
        running = "connected" if beats else "no beat is running"
        updated = f"{(now - state.updated).total_seconds():.0f}s ago" if state.updated else "never"
        click.echo(f"leader:   {state.leader or '?'} since {shown(state.leading_since)}")
        click.echo(f"          state #{state.seq} updated {updated}; {running}")
    for entry in entries:
        click.echo("")
        click.echo(f"{entry.name}: {entry.task} {entry.schedule.describe()}   missed: {entry.missed}"
                   + (f", jitter {entry.jitter:g}s" if entry.jitter else ""))
        known = state.entries.get(entry.name) if state else None
        last = "unknown" if problem else shown(known.last_run if known else None)
        click.echo(f"  last run:  {last}")
        runs = upcoming(entry.schedule, tz, now, count)
        for i, instant in enumerate(runs):
            click.echo(f"  {'next:' if i == 0 else '':10} {shown(instant)}")
        if not runs:
            click.echo("  next:      none (its time has passed)")
    if problem:
        sys.exit(EXIT_RUNTIME)
