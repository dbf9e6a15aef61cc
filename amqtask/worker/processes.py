"""Several worker processes under one command: `amqtask worker --processes N`.

One Python process handles messages on one core at most: the event loop that reads
frames, decodes messages and acknowledges them is single-threaded whatever the pool.
N complete workers, each with its own connection, consumers, prefetch window and
pool, use N cores for messaging (as Dramatiq's processes do).

The supervisor only forwards signals and replaces processes:
- SIGTERM or SIGINT to the supervisor reaches every process as SIGUSR1: the first
  is a warm shutdown, the second cold. The processes ignore SIGTERM and SIGINT
  themselves, so a terminal's Ctrl-C or a service manager's SIGTERM sent to the
  whole process group is acted on once, not twice (which would be a cold stop).
- A process killed by a signal (the OOM killer, kill -9, a crash) while no shutdown
  was asked for is replaced after a second; its unacknowledged messages went back
  to their queues with its connection. A process that ends by itself could not run
  (a worker only does so when it cannot start: the broker refuses it, a queue's
  arguments conflict): that fails the whole command, as it would a single worker.
- If the supervisor dies, its processes get SIGUSR1 (Linux's parent-death signal)
  and shut down warmly.

The exit status is the worst of the processes' (0 after a warm shutdown).
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Callable

from ..errors import AmqtaskError

log = logging.getLogger("amqtask.worker")
SHUTDOWN_SIGNAL = signal.SIGUSR1
RESPAWN_DELAY = 1.0
_PR_SET_PDEATHSIG = 1


def supervise(count: int, run_one: Callable[[int], int], *,
              on_exit: Callable[[int, int, str, bool], None] | None = None,
              had_started: Callable[[int], bool] | None = None) -> int:
    """Run `run_one(index)` (index 1..count) in `count` forked processes until they
    are told to stop; return the exit status. `run_one` must act on SHUTDOWN_SIGNAL
    (first warm, then cold) and unblock it once it can (see `Worker.run`).
    `on_exit(index, pid, how, replaced)` hears of each process that ended (`index` as
    `run_one` got it; how: "was killed by signal 9", "exited with status 1"), before
    any replacement starts. `had_started(index)` tells whether that process had
    started: one that ends by itself after it started (a task called os._exit) is
    replaced, as one killed by a signal; one that ends before could not run, which
    fails the command. Without it, only a signal counts as a death."""
    supervisor = os.getpid()
    children: dict[int, int] = {}  # pid -> index
    stops = 0

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(_child(index, supervisor, run_one))
        children[pid] = index

    def forward(signum: int, frame: object) -> None:
        nonlocal stops
        stops += 1
        log.warning("%s shutdown of %d worker processes", "warm" if stops == 1 else "cold", len(children))
        for pid in children:
            _signal(pid, SHUTDOWN_SIGNAL)

    # Blocked while forking, so a child never runs the supervisor's handlers.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    for index in range(count):
        start(index)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    worst = 0
    try:
        while children:
            pid, status = os.wait()
            index = children.pop(pid, None)
            if index is None:
                continue
            died = os.WIFSIGNALED(status) or (had_started is not None and had_started(index + 1))
            if on_exit is not None:
                on_exit(index + 1, pid, _how(status), not stops and died)
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
            if stops:
                worst = max(worst, code)
                continue
            if not died:
                log.error("worker process %s could not run (exit status %s); stopping the others", pid, code)
                worst = code or 1
                forward(signal.SIGTERM, None)
                continue
            log.error("worker process %s exited (status %s); starting another in %gs", pid, code, RESPAWN_DELAY)
            time.sleep(RESPAWN_DELAY)
            if not stops:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
                start(index)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return worst


def _child(index: int, supervisor: int, run_one: Callable[[int], int]) -> int:
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        # Held until the worker has its handler installed: a stop asked for while
        # the process starts is acted on, not lost and not fatal.
        signal.pthread_sigmask(signal.SIG_BLOCK, {SHUTDOWN_SIGNAL})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        multiprocessing.current_process().name = f"Worker-{index + 1}"
        die_with_parent(SHUTDOWN_SIGNAL, supervisor)
        code = run_one(index + 1)
    except AmqtaskError as exc:  # broker unreachable, a declare conflict...: said in one line
        log.error("%s", exc)
    except BaseException:  # noqa: BLE001 - whatever happens, this process ends here
        log.exception("worker process failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def die_with_parent(sig: int, parent: int) -> None:
    """Ask Linux to send `sig` to this process when its parent (pid `parent`) dies;
    if it died already (before the request took effect), send it now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: an orphan runs on until it is stopped
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
