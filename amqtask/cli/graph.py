"""`amqtask graph`: routing.yaml as a picture source (no broker needed)."""
from __future__ import annotations

import click

from . import main
from .common import config_option, load


@main.command()
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True,
              help="mermaid (GitHub renders it in Markdown) or dot (Graphviz: `| dot -Tsvg > topology.svg`).")
@config_option
def graph(fmt: str, config_path: str | None) -> None:
    """Print the topology as a picture: exchanges, queues, bindings with their keys,
    routes from task patterns, dead-letter paths and the delay cascade."""
    from ..graph import render

    click.echo(render(load(config_path), fmt), nl=False)
