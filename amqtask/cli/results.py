"""`amqtask results ...`: maintenance of the result backend."""
from __future__ import annotations

import click

from ..results import open_backend
from . import main
from .common import EXIT_USAGE, config_option, fail, handle_errors, load


@main.group()
def results() -> None:
    """The result backend (results.backend in routing.yaml)."""


@results.command()
@config_option
@handle_errors
def cleanup(config_path: str | None) -> None:
    """Delete results older than results.expires.

    PostgreSQL keeps rows until they are deleted: run this periodically (from
    cron, say). Redis expires results by itself (a TTL) and rpc:// reply queues
    drop old results, so for them there is nothing to do.
    """
    settings = load(config_path)
    backend = open_backend(settings.results, settings.broker)
    if backend is None:
        fail("results are off (no results.backend in routing.yaml): nothing to clean up", EXIT_USAGE)
        return
    try:
        tasks, groups = backend.cleanup()
    finally:
        backend.close()
    if settings.results.url and settings.results.url.startswith("db+"):
        click.echo(f"deleted {tasks} results and {groups} groups older than "
                   f"{settings.results.expires_seconds}s from {backend.url}")
    else:
        click.echo(f"nothing to do: {backend.url} expires results by itself")
