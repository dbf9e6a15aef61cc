"""`amqtask call`: publish a task from the shell."""
from __future__ import annotations

import json
import sys

import click

from ..publisher import CallOptions, Publisher
from dataclasses import replace

from ..results import AsyncResult, open_backend
from ..router import Router
from . import main
from .common import EXIT_RUNTIME, config_option, handle_errors, json_arg, load


@main.command()
@click.argument("task_name")
@click.option("--args", "args_json", default="[]", metavar="JSON", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", metavar="JSON", help="Keyword arguments as a JSON object.")
@click.option("--exchange", default=None, help="Override the routed exchange.")
@click.option("--routing-key", default=None, help="Override the routed routing key.")
@click.option("-Q", "--queue", default=None, help="Send straight to this queue (default exchange).")
@click.option("--countdown", type=float, default=None, metavar="SECONDS", help="Run no earlier than this from now.")
@click.option("--priority", type=click.IntRange(0, 255), default=None)
@click.option("--serializer", type=click.Choice(["json", "msgpack", "yaml", "pickle"]), default=None)
@click.option("--wait", is_flag=True, help="Wait for the result and print it (exit 1 if the task failed).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds --wait waits.")
@config_option
@handle_errors
def call(task_name: str, args_json: str, kwargs_json: str, exchange: str | None, routing_key: str | None,
         queue: str | None, countdown: float | None, priority: int | None, serializer: str | None, wait: bool,
         timeout: float, config_path: str | None) -> None:
    """Publish TASK_NAME from the shell and print its id and destination.

    The publish is confirmed by the broker; a message no queue would receive is
    refused as unroutable (exit 1).
    """
    args = json_arg(args_json, list, "--args", "a JSON list, like '[2, 3]'")
    kwargs = json_arg(kwargs_json, dict, "--kwargs", "a JSON object, like '{\"x\": 1}'")
    settings = load(config_path)
    router = Router(settings)
    results = None
    if wait:
        # --wait asks for the result: the configured backend, else the broker's reply queues.
        wanted = settings.results if settings.results.url else replace(settings.results, backend="rpc://",
                                                                       enabled=True)
        results = open_backend(wanted, settings.broker)
    publisher = Publisher(settings, router, results=results)
    try:
        sent = publisher.send(task_name, args, kwargs, call=CallOptions(
            exchange=exchange, routing_key=routing_key, queue=queue, countdown=countdown, priority=priority,
            serializer=serializer))
        d = sent.destination
        queues = settings.topology.route(d.exchange, d.routing_key, d.headers)
        click.echo(f"task id:     {sent.task_id}")
        click.echo(f"exchange:    {d.exchange or '(default exchange)'}")
        click.echo(f"routing key: {d.routing_key}")
        click.echo(f"queues:      {', '.join(sorted(queues)) or '(per the broker)'}")
        if wait:
            handle = AsyncResult(sent.task_id, task_name, d, results)
            handle.get(timeout=timeout, propagate=False)
            document = (results.latest(sent.task_id) if results else None) or {}
            state = document.get("status", "?")
            click.echo(f"state:       {state}")
            click.echo(f"result:      {json.dumps(document.get('result'))}")
            if state != "SUCCESS":
                sys.exit(EXIT_RUNTIME)
    finally:
        publisher.close()  # closes the result backend too

