"""The `amqtask` command. Each group of subcommands lives in its own module and
registers itself on `main`; nothing outside this package imports click."""
from __future__ import annotations

import os

import click

from .. import __version__
from .common import GlobalOptions, unused_global_notes

# Subcommands that log: they say the accepted-but-unused global options in their log;
# the others say them on standard error.
LOGGING_COMMANDS = ("worker", "beat")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="amqtask")
@click.option("-A", "--app", default=None, metavar="MODULE[:APP]",
              help="The App (Celery's -A): for worker, beat, schedules and check; the other commands read "
                   "its settings unless given --config.")
@click.option("-b", "--broker", default=None, metavar="URL", help="Broker URL over routing.yaml's broker.url.")
@click.option("--result-backend", default=None, metavar="URL", help="Result backend over routing.yaml's.")
@click.option("--config", default=None, metavar="PATH",
              help="routing.yaml, for every subcommand (the same as its own --config).")
@click.option("--workdir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Change to this directory first (before -A is imported).")
@click.option("-q", "--quiet", is_flag=True, help="worker, beat: no start-up banner.")
@click.option("-C", "--no-color", is_flag=True, help="Accepted for Celery compatibility (amqtask prints no colour).")
@click.option("--loader", default=None, metavar="CLASS", help="Accepted for Celery compatibility (no loaders).")
@click.option("--skip-checks", is_flag=True, help="Accepted for Celery compatibility (no Django checks).")
@click.pass_context
def main(ctx: click.Context, app: str | None, broker: str | None, result_backend: str | None, config: str | None,
         workdir: str | None, quiet: bool, no_color: bool, loader: str | None, skip_checks: bool) -> None:
    """amqtask: a RabbitMQ-first task queue.

    routing.yaml declares exchanges, queues, bindings and the routes from task
    names to them. Start with `amqtask check`, then `amqtask declare`.

    Celery's global options are accepted before the subcommand (`amqtask -A proj
    worker -l info`) as well as after it (`amqtask worker -A proj`).
    """
    if workdir:
        workdir = os.path.abspath(workdir)
        os.chdir(workdir)  # as Celery's --workdir: before the App's module is imported
    notes = unused_global_notes(no_color=no_color, loader=loader, skip_checks=skip_checks,
                                 quiet=quiet and ctx.invoked_subcommand not in LOGGING_COMMANDS)
    ctx.obj = GlobalOptions(app=app, broker=broker, result_backend=result_backend, config=config, workdir=workdir,
                            quiet=quiet, notes=notes)
    if ctx.invoked_subcommand not in LOGGING_COMMANDS:
        for note in notes:
            click.echo(f"note: {note}", err=True)


# Imported for their side effect: each module adds its commands to `main`.
from . import topology, tasks, worker, inspect, control, dead, graph, status  # noqa: E402,F401
from . import results  # noqa: E402,F401
from . import beat  # noqa: E402,F401
from . import importer  # noqa: E402,F401

__all__ = ["main"]
