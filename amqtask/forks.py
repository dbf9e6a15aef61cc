"""Client objects start afresh in a forked child (gunicorn --preload, multiprocessing).

A child inherits its parent's sockets, locks and per-process state: writing on
the parent's connection corrupts it, a lock a parent thread held at the fork is
never released in the child, and a reply queue named by the parent delivers the
child's results to whichever process reads first. Objects that hold such state
register here; in the child, before any of its threads runs, each one's
`after_fork()` drops what was the parent's (without closing it: that would close
it for the parent too) so that it is built anew on first use.

Hooking os.fork, rather than comparing pids on each call, leaves no moment when
two threads of the child could both decide to start afresh.
"""
from __future__ import annotations

import os
import weakref
from typing import Protocol


class StartsAfreshAfterFork(Protocol):
    def after_fork(self) -> None:
        """Forget the parent's connections, locks and state; no I/O, no locks taken."""


# The one process-wide registry this needs: "every such object in the process" is what it means.
_REGISTERED: "weakref.WeakSet[StartsAfreshAfterFork]" = weakref.WeakSet()


def start_afresh_after_fork(obj: StartsAfreshAfterFork) -> None:
    """Call obj.after_fork() in every child forked from now on (while obj lives)."""
    _REGISTERED.add(obj)


def _in_the_child() -> None:
    for obj in list(_REGISTERED):
        obj.after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_in_the_child)
