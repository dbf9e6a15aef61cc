"""`amqtask import-celery`: a Celery configuration -> routing.yaml and a report."""
from __future__ import annotations

from pathlib import Path

import click

from . import main
from .common import EXIT_USAGE, fail


@main.command("import-celery")
@click.argument("source", metavar="MODULE_OR_FILE")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write routing.yaml here (default: standard output; the report goes to standard error).")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--namespace", default=None, metavar="NAME",
              help="Read NAME_-prefixed settings, as config_from_object(..., namespace=NAME) does "
                   "(Django projects: CELERY).")
@click.option("--task", "tasks", multiple=True, metavar="NAME",
              help="A task name to route and check against Celery's router (repeatable). Names in routes, "
                   "annotations, beat schedules and the Celery app's registry are known already; router "
                   "functions are asked about every known name.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report to this file.")
def import_celery(source: str, output: Path | None, force: bool, namespace: str | None, tasks: tuple[str, ...],
                  report_path: Path | None) -> None:
    """Translate a Celery configuration into routing.yaml.

    MODULE_OR_FILE is a module name (proj.celeryconfig), "module:attribute" (a
    config class, or a Celery app whose settings and tasks are read), or a path to a
    .py file. Old upper-case names (BROKER_URL, CELERY_QUEUES, ...) and new ones
    (broker_url, task_queues, ...) are both read, with kombu Queue/Exchange objects,
    timedelta and crontab schedules, and route maps, lists and router functions.
    The module is imported: it runs, as it would under Celery.

    The output passes `amqtask check`; `amqtask route NAME` gives the exchange,
    routing key and queue Celery would. The report lists every setting translated,
    changed in meaning, or not translated, and the routes checked against Celery's
    router. Exit 0 when written, 2 when the configuration cannot be read.
    """
    from ..celery_import import CeleryImportError, import_celery as run_import

    if output is not None and output.exists() and not force:
        fail(f"{output} exists; pass --force to overwrite it", EXIT_USAGE)
    try:
        translation = run_import(source, namespace=namespace, task_names=tasks)
    except CeleryImportError as exc:
        fail(str(exc), EXIT_USAGE)
    report = translation.report.format()
    if output is None:
        click.echo(translation.text, nl=False)
    else:
        output.write_text(translation.text, encoding="utf-8")
        report += f"\nwrote {output}; check it with: amqtask check --config {output}"
    if report_path is not None:
        report_path.write_text(report + "\n", encoding="utf-8")
    click.echo(report, err=True)
