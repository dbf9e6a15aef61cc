"""Execution pools. Each runs one task invocation at a time per slot and returns its
Outcome; the consumer decides how many run at once (its slots) and what happens
to the message afterwards.

- solo: one thread beside the event loop (the loop keeps heartbeats going).
- threads: N threads. A hard time limit reports the task failed at once, but a
  Python thread cannot be killed: it keeps its slot until the function returns.
  The soft limit raises SoftTimeLimitExceeded inside the thread.
- asyncio: `async def` tasks run as coroutines on the loop, many at once; the
  first limit reached cancels the coroutine. Plain functions go to threads.
- prefork: N child processes forked from the worker. A child that dies is
  replaced; the hard limit kills the child; children retire after
  --max-tasks-per-child tasks or --max-memory-per-child KiB.
"""
from __future__ import annotations

import asyncio
import contextvars
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..results import exception_payload
from ..serializers import Codec
from .execute import FAILURE, Outcome, failure, run_async, run_sync
from .request import Request, SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

if TYPE_CHECKING:
    from ..app import App
    from ..task import Task

log = logging.getLogger("amqtask.worker")
WORKER_LOST = "WORKER_LOST"


@dataclass(frozen=True)
class Limits:
    soft: float | None = None
    hard: float | None = None


class Pool:
    name = "pool"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str) -> None:
        self.app = app
        self.concurrency = concurrency
        self.codec = codec
        self.serializer = serializer

    async def start(self) -> None:
        pass

    async def run(self, task: "Task", request: Request, limits: Limits) -> Outcome:
        raise NotImplementedError

    async def stop(self, *, cold: bool = False) -> None:
        pass

    def time_limit_outcome(self, request: Request, exc: BaseException) -> Outcome:
        return failure(request, exc, self.codec, self.serializer, 0.0, "")


class ThreadPool(Pool):
    name = "threads"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str) -> None:
        super().__init__(app, concurrency, codec, serializer)
        self._threads = _Threads(concurrency)

    async def run(self, task: "Task", request: Request, limits: Limits) -> Outcome:
        loop = asyncio.get_running_loop()
        running = _RunningThread()

        def job() -> Outcome:
            running.begin()
            try:
                return run_sync(task, request, self.codec, self.serializer)
            finally:
                running.end()

        future = self._threads.submit(contextvars.copy_context().run, job)
        soft_timer = loop.call_later(limits.soft, running.interrupt) if limits.soft else None
        try:
            if limits.hard:
                try:
                    return await asyncio.wait_for(asyncio.shield(future), limits.hard)
                except asyncio.TimeoutError:
                    log.error("task %s[%s] passed its hard time limit (%ss); its thread runs on until it returns",
                              task.name, request.id, limits.hard)
                    return self.time_limit_outcome(request, TimeLimitExceeded(f"hard time limit ({limits.hard}s)"))
            return await future
        finally:
            if soft_timer:
                soft_timer.cancel()

    async def stop(self, *, cold: bool = False) -> None:
        await self._threads.stop(cold=cold)


class _Threads:
    """N threads taking jobs from one queue; their results come back to the event
    loop in batches: a job that finishes while the loop has yet to collect earlier
    ones adds to that batch instead of waking the loop once more. (An executor's
    future chain costs a wake-up and several objects per job, which on a busy
    worker is much of the cost of a short task.)"""

    def __init__(self, count: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: list[tuple[asyncio.Future, Any, BaseException | None]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = [threading.Thread(target=self._work, name=f"amqtask-task-{i}", daemon=True)
                         for i in range(count)]
        self._started = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        if not self._started:
            self._loop = asyncio.get_running_loop()
            for thread in self._threads:
                thread.start()
            self._started = True
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, fn, args = item
            try:
                value, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the job
                value, error = None, exc
            with self._lock:
                self._done.append((future, value, error))
                first = len(self._done) == 1
            if first:
                try:
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._collect)
                except RuntimeError:  # the loop is closed: nobody waits for this any more
                    return

    def _collect(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for future, value, error in done:
            if future.done():
                continue  # its awaiter gave up (a hard time limit)
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    async def stop(self, *, cold: bool = False) -> None:
        """Warm: let queued and running jobs finish, then end the threads. Cold: end
        them as soon as they are idle; the process exits without waiting for them."""
        if cold:
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is not None:  # a job nobody started: its message goes back to the queue
                    item[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        if not cold and self._started:
            loop = asyncio.get_running_loop()
            for thread in self._threads:
                await loop.run_in_executor(None, thread.join)


class SoloPool(ThreadPool):
    name = "solo"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str) -> None:
        super().__init__(app, 1, codec, serializer)


class _RunningThread:
    """Lets the loop raise SoftTimeLimitExceeded inside the thread running a task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ident: int | None = None

    def begin(self) -> None:
        with self._lock:
            self._ident = threading.get_ident()

    def end(self) -> None:
        with self._lock:
            self._ident = None

    def interrupt(self) -> None:
        with self._lock:
            if self._ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._ident), ctypes.py_object(SoftTimeLimitExceeded)
                )


class AsyncioPool(Pool):
    name = "asyncio"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str) -> None:
        super().__init__(app, concurrency, codec, serializer)
        self._threads = ThreadPool(app, min(32, concurrency), codec, serializer)

    async def run(self, task: "Task", request: Request, limits: Limits) -> Outcome:
        if not task.is_async:
            return await self._threads.run(task, request, limits)
        first = min((x for x in (limits.soft, limits.hard) if x), default=None)
        try:
            return await asyncio.wait_for(run_async(task, request, self.codec, self.serializer), first)
        except asyncio.TimeoutError:
            kind = SoftTimeLimitExceeded if first == limits.soft else TimeLimitExceeded
            return self.time_limit_outcome(request, kind(f"time limit ({first}s): the coroutine was cancelled"))

    async def stop(self, *, cold: bool = False) -> None:
        await self._threads.stop(cold=cold)


# -- prefork -------------------------------------------------------------------------


def _child_main(conn: multiprocessing.connection.Connection, app: "App", codec: Codec, serializer: str,
                max_tasks: int | None, max_memory_kib: int | None) -> None:
    """A child's life: take a job, run it, send the Outcome back; retire when told
    to by the limits. Signals are the parent's business."""
    signal.set_wakeup_fd(-1)  # the parent's event loop owns the inherited wake-up pipe
    # The parent decides when children stop (a sentinel, or SIGKILL on cold shutdown):
    # a terminal's Ctrl-C or a service manager's SIGTERM to the whole group must not
    # kill tasks mid-run while the parent is finishing warmly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def soft_limit(signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded("soft time limit exceeded")

    signal.signal(signal.SIGALRM, soft_limit)
    done = 0
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        task_name, request, soft = job
        task = app.tasks[task_name]
        if soft:
            signal.setitimer(signal.ITIMER_REAL, soft)
        try:
            outcome = run_sync(task, request, codec, serializer)
        except SoftTimeLimitExceeded as exc:  # fired outside the task's own frame
            outcome = failure(request, exc, codec, serializer, 0.0, "")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        done += 1
        retiring = bool(max_tasks and done >= max_tasks) or bool(max_memory_kib and rss_kib() > max_memory_kib)
        conn.send((outcome, retiring))
        if retiring:
            return


def rss_kib() -> int:
    """Resident memory of this process in KiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Child:
    def __init__(self, process: multiprocessing.process.BaseProcess, conn: multiprocessing.connection.Connection):
        self.process = process
        self.conn = conn
        self.future: asyncio.Future | None = None
        self.timed_out = False
        self.retiring = False


class PreforkPool(Pool):
    name = "prefork"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str, *,
                 max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None) -> None:
        super().__init__(app, concurrency, codec, serializer)
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._context = multiprocessing.get_context("fork")
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._stopping = False
        self.replaced = 0

    async def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn()

    def _spawn(self) -> None:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main, name="amqtask-child", daemon=True,
            args=(child_conn, self.app, self.codec, self.serializer, self.max_tasks_per_child,
                  self.max_memory_per_child),
        )
        process.start()
        child_conn.close()
        child = _Child(process, parent_conn)
        loop = asyncio.get_running_loop()
        loop.add_reader(parent_conn.fileno(), self._on_readable, child)
        loop.add_reader(process.sentinel, self._on_exit, child)
        self._children.add(child)
        self._idle.put_nowait(child)

    def child_pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.process.pid]

    def _on_readable(self, child: _Child) -> None:
        try:
            outcome, retiring = child.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(child.conn.fileno())
            return  # the child died; _on_exit settles its job
        future, child.future = child.future, None
        if future is not None and not future.done():
            future.set_result(outcome)
        child.retiring = retiring
        if not retiring:
            self._idle.put_nowait(child)

    def _on_exit(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.process.sentinel)
        try:
            loop.remove_reader(child.conn.fileno())
        except (OSError, ValueError):
            pass
        child.process.join(0)
        self._children.discard(child)
        future, child.future = child.future, None
        if future is not None and not future.done():
            if child.timed_out:
                future.set_result(Outcome(FAILURE, reason="TimeLimitExceeded: hard time limit; the child was killed"))
            else:
                code = child.process.exitcode
                future.set_result(Outcome(WORKER_LOST, reason=f"WorkerLostError: child exited with status {code}",
                                          exc_payload=exception_payload(WorkerLostError(f"exit status {code}"))))
        child.conn.close()
        if not self._stopping:
            if not child.retiring:
                log.warning("pool child %s exited (status %s); starting a new one",
                            child.process.pid, child.process.exitcode)
            self.replaced += 1
            self._spawn()

    async def run(self, task: "Task", request: Request, limits: Limits) -> Outcome:
        child = await self._idle.get()
        while child not in self._children or child.retiring:
            child = await self._idle.get()
        loop = asyncio.get_running_loop()
        child.future = loop.create_future()
        child.timed_out = False
        future = child.future
        child.conn.send((task.name, request, limits.soft))
        killer = None
        if limits.hard:
            def kill() -> None:
                if child.future is future:
                    log.error("task %s[%s] passed its hard time limit (%ss); killing child %s",
                              task.name, request.id, limits.hard, child.process.pid)
                    child.timed_out = True
                    child.process.kill()
            killer = loop.call_later(limits.hard, kill)
        try:
            outcome = await future
        finally:
            if killer:
                killer.cancel()
        if outcome.state == FAILURE and child.timed_out:
            return self.time_limit_outcome(request, TimeLimitExceeded(f"hard time limit ({limits.hard}s)"))
        return outcome

    async def stop(self, *, cold: bool = False) -> None:
        self._stopping = True
        for child in list(self._children):
            if cold:
                child.process.kill()
            else:
                try:
                    child.conn.send(None)
                except OSError:
                    pass
        for child in list(self._children):
            await asyncio.get_running_loop().run_in_executor(None, child.process.join, 5)
            if child.process.is_alive():
                child.process.kill()


def make_pool(name: str, app: "App", concurrency: int, codec: Codec, serializer: str, *,
              max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None) -> Pool:
    if name == "prefork":
        return PreforkPool(app, concurrency, codec, serializer, max_tasks_per_child=max_tasks_per_child,
                           max_memory_per_child=max_memory_per_child)
    pools = {"threads": ThreadPool, "solo": SoloPool, "asyncio": AsyncioPool}
    return pools[name](app, concurrency, codec, serializer)
