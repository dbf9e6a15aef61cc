"""`amqtask status`: every queue of routing.yaml with its depth, consumers and dead letters."""
from __future__ import annotations

import datetime as dt
import signal
import threading
from typing import TYPE_CHECKING

import click

from ..errors import BrokerError
from ..settings import Settings
from . import main
from .common import config_option, handle_errors, load, table

if TYPE_CHECKING:
    from ..amqp.blocking import BlockingTransport


@main.command()
@click.option("--watch", type=click.FloatRange(0.5), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C (a lost broker is shown and retried).")
@config_option
@handle_errors
def status(watch: float | None, config_path: str | None) -> None:
    """Show every queue in routing.yaml: ready messages, consumers and how many dead
    letters wait in its dead-letter queue.

    Uses passive declares (no management plugin; nothing is created). A queue that
    does not exist is shown as missing; a dead-letter queue nobody has needed yet as -.
    """
    from ..amqp.blocking import BlockingTransport

    settings = load(config_path)
    if watch is None:
        with BlockingTransport(settings.broker) as transport:
            click.echo(_render(settings, transport))
        return
    _watch(settings, BlockingTransport(settings.broker), watch)


def _watch(settings: Settings, transport: "BlockingTransport", every: float) -> None:
    """Redraw until Ctrl-C or SIGTERM. The signal only sets a flag: raised in the
    middle of a broker call, it would leave the connection half closed."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            try:
                text = _render(settings, transport)
            except BrokerError as exc:  # keep watching: the broker may come back
                text = f"error: {exc}"
            click.clear()
            click.echo(f"{dt.datetime.now():%H:%M:%S}  every {every:g}s  {settings.broker.urls[0].redacted()}\n")
            click.echo(text)
            stop.wait(every)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        transport.close()


def _render(settings: Settings, transport: "BlockingTransport") -> str:
    from ..status import Depth, collect, table_rows

    def inspect(name: str) -> Depth | None:
        stats = transport.queue_stats(name)
        return None if stats is None else Depth(stats.messages, stats.consumers)

    return table(table_rows(collect(settings.topology, inspect)))
