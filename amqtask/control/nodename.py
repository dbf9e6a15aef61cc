"""Worker node names: `-n NAME` with Celery's % expansions (celery/utils/nodenames.py).

A name is `shortname@host`. A value without `@` is taken as the host part and gets
the default short name (Celery does the same: `-n w1` is `celery@w1`, here
`amqtask@w1`). Then the abbreviations are expanded:

    %h  the full host name             (worker1.example.com)
    %n  the host's first label         (worker1)
    %d  the host's domain              (example.com)
    %i  the process index under --processes N (1..N), or 0 for a single process
    %I  the same with a leading '-' (-1..-N), or nothing for a single process
    %p  this process's id (amqtask's own; Celery's -n has no %p)
    %%  a literal %

Any other %x is an error, as in Celery.
"""
from __future__ import annotations

import os
import re
import socket

from ..errors import AmqtaskError

DEFAULT_SHORT_NAME = "amqtask"
SEPARATOR = "@"
_ABBREVIATION = re.compile(r"%([%\w])")


class NodeNameError(AmqtaskError):
    """A node name template uses an unknown % abbreviation or is empty."""


def split(name: str) -> tuple[str | None, str]:
    """'w1@host' -> ('w1', 'host'); 'host' -> (None, 'host')."""
    short, sep, host = name.partition(SEPARATOR)
    return (short, host) if sep else (None, name)


def expand(template: str | None, *, host: str | None = None, index: int | None = None,
           pid: int | None = None, default_short: str = DEFAULT_SHORT_NAME) -> str:
    """The node name for `template` (None: `amqtask@%h`) on `host` (default: this
    machine), for process `index` (1-based under --processes N; None or 0 for a
    single process) and process id `pid` (default: this process)."""
    host = host or socket.gethostname()
    short, host_part = split(template or f"{default_short}{SEPARATOR}%h")
    if not host_part:
        raise NodeNameError(f"node name {template!r} has nothing after '@'")
    name = f"{short or default_short}{SEPARATOR}{host_part}"
    first_label, _, domain = host.partition(".")
    keys = {
        "h": host,
        "n": first_label,
        "d": domain,
        "i": str(index) if index else "0",
        "I": f"-{index}" if index else "",
        "p": str(os.getpid() if pid is None else pid),
        "%": "%",
    }

    def resolve(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in keys:
            raise NodeNameError(f"unknown abbreviation %{key} in node name {template!r} "
                                "(known: %h %n %d %i %I %p %%)")
        return keys[key]

    return _ABBREVIATION.sub(resolve, name)


def per_process(template: str | None, processes: int) -> str | None:
    """The template each of `processes` processes expands: two processes must not
    share a node name (their control queues are exclusive), so without %i or %I
    one gets '%I' after its short name ('amqtask@%h' -> 'amqtask%I@%h')."""
    if processes <= 1:
        return template
    template = template or f"{DEFAULT_SHORT_NAME}{SEPARATOR}%h"
    if "%i" in template or "%I" in template:
        return template
    short, host_part = split(template)
    return f"{short or DEFAULT_SHORT_NAME}%I{SEPARATOR}{host_part}"
