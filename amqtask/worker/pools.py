"""Execution pools. Each runs one task invocation at a time per slot and returns its
Outcome; the handler decides what happens to the message afterwards.

A pool owns its slots: the handler waits in `acquire()` for an idle one (fair
dispatch: work is handed over only to an idle slot) and `run()` frees it when the
thread, child or coroutine behind it is really free again. Time limits count from
the moment the task starts, never from when it was handed over.

- solo: one thread beside the event loop (the loop keeps heartbeats going).
- threads: N threads. A hard time limit reports the task failed at once, but a
  Python thread cannot be killed: it keeps its slot until the function returns,
  and no other task is handed to it meanwhile.
  The soft limit raises SoftTimeLimitExceeded inside the thread.
- asyncio: `async def` tasks run as coroutines on the loop, many at once; the
  first limit reached cancels the coroutine. Plain functions go to threads.
- prefork: N child processes forked from the worker. A child that dies is
  replaced; the hard limit kills the child; children retire after
  --max-tasks-per-child tasks or --max-memory-per-child KiB; a child whose parent
  dies is killed by the kernel (its message is redelivered to another worker, so
  it must not run on). A cold shutdown kills running children: their tasks end
  CANCELLED and their messages go back to the queue. Children ignore SIGTERM and
  SIGINT, so that a service manager's SIGTERM or a terminal's Ctrl-C to the whole
  process group cannot kill tasks mid-run; revoke with terminate asking for one of
  those two is therefore delivered as SIGKILL (see `child_signal`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
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
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import signals
from ..metrics import NullMetrics
from ..results import exception_payload
from ..serializers import Codec
from .execute import CANCELLED, FAILURE, NOT_STARTED, WORKER_LOST, Outcome, failure, run_async, run_sync
from .processes import die_with_parent
from .request import Request, SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

if TYPE_CHECKING:
    from ..app import App
    from ..task import Task

log = logging.getLogger("amqtask.worker")
# What prefork children ignore on purpose (see _child_main).
SIGNALS_CHILDREN_IGNORE = frozenset({int(signal.SIGTERM), int(signal.SIGINT)})


@dataclass(frozen=True)
class Limits:
    soft: float | None = None
    hard: float | None = None


# Why a job handed to a pool did not start (Outcome state NOT_STARTED, this as reason).
WITHDRAWN = "withdrawn"  # a warm shutdown took it back (and returned it to its queue)
STOPPING = "stopping"  # the worker is stopping, or its channel is gone: not to run here
REVOKED_WAITING = "revoked"  # revoked while it waited for a slot
NEEDS_LOOP = object()  # JobStart.now(): the rest of the start must run on the event loop


class JobStart(Protocol):
    """What the handler does the moment a slot takes a job, right before the task
    runs, wherever that is (a pool thread, or the event loop): `now()` decides and
    does the bookkeeping that any thread may do, returning None (run it), a reason
    not to, or NEEDS_LOOP when the rest must happen on the event loop (an early ack,
    a STARTED result), which `on_loop()` then does."""

    def now(self) -> object: ...

    async def on_loop(self) -> str | None: ...


async def begin(start: JobStart | None) -> str | None:
    """Start a job on the event loop; None to run it, else why not."""
    if start is None:
        return None
    reason = start.now()
    if reason is NEEDS_LOOP:
        return await start.on_loop()
    return reason  # type: ignore[return-value]


def begin_in_thread(start: JobStart | None, loop: asyncio.AbstractEventLoop) -> str | None:
    """Start a job in a pool thread: only a job that needs the event loop waits for it."""
    if start is None:
        return None
    reason = start.now()
    if reason is not NEEDS_LOOP:
        return reason  # type: ignore[return-value]
    try:
        return asyncio.run_coroutine_threadsafe(start.on_loop(), loop).result()
    except (RuntimeError, concurrent.futures.CancelledError):  # the loop is closed or stopping
        return STOPPING


def not_started(reason: str) -> Outcome:
    return Outcome(NOT_STARTED, reason=reason)


class Pool:
    """Runs tasks in slots. `run()` is called for every accepted job at once: the
    pool decides when a slot takes it (fair dispatch: only a free slot ever takes
    work) and calls `start` at that moment; until then the job waits, and a warm
    shutdown may take it back (`withdraw()`)."""

    name = "pool"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str) -> None:
        self.app = app
        self.concurrency = concurrency
        self.codec = codec
        self.serializer = serializer
        self._free = asyncio.Semaphore(concurrency)
        # Told (task name, task id) when a task passes its hard time limit in a thread,
        # which nothing can stop: a supervised worker process then retires (worker.py).
        self.on_hung: Callable[[str, str], None] | None = None

    async def start(self) -> None:
        pass

    async def _acquire(self, start: JobStart | None) -> str | None:
        """Wait for a free slot (pools that run tasks from the event loop), then start
        the job there; a job that does not start gives its slot back."""
        await self._free.acquire()
        reason = await begin(start)
        if reason is not None:
            self._free.release()
        return reason

    def withdraw(self) -> None:
        """Warm shutdown: jobs that no slot has taken yet end NOT_STARTED (WITHDRAWN)
        at once, even when every slot is busy for long."""

    @property
    def resizable(self) -> bool:
        return False

    def grow(self, n: int) -> None:
        """Add n slots (pool_grow, --autoscale)."""
        from ..control.view import ControlRefused

        raise ControlRefused(f"the {self.name} pool cannot change its size")

    def shrink(self, n: int) -> None:
        """Remove n slots, as they become idle (never below one)."""
        self.grow(-n)

    def pids(self) -> list[int]:
        """The processes running tasks: the children (prefork), else this process."""
        return [os.getpid()]

    def pid_of(self, task_id: str) -> int | None:
        """The process running `task_id` now."""
        return os.getpid()

    def terminate(self, task_id: str, signum: int) -> bool:
        """Stop a running task (revoke with terminate); True when it was signalled.
        Only a prefork child can be: a thread or coroutine cannot be stopped from
        outside, which the command's reply says rather than "tasks unknown"."""
        from ..control.view import ControlRefused

        raise ControlRefused(f"task {task_id} runs in the {self.name} pool, whose tasks cannot be terminated (only "
                             "prefork children can be signalled); it runs to its end, and is revoked: it will not "
                             "run again")

    def _shrink_slots(self, n: int, then: Callable[[], None] = lambda: None) -> None:
        """Take n slots out of use as they free up, calling `then` for each."""
        async def take() -> None:
            for _ in range(n):
                await self._free.acquire()
                then()

        asyncio.ensure_future(take())

    async def run(self, task: "Task", request: Request, limits: Limits, start: JobStart | None = None) -> Outcome:
        """Run the task once a slot takes it (calling `start` then); NOT_STARTED
        with the reason when `start` said no or the job was withdrawn."""
        raise NotImplementedError

    async def stop(self, *, cold: bool = False) -> None:
        pass

    def time_limit_outcome(self, request: Request, exc: BaseException) -> Outcome:
        return failure(None, request, exc, 0.0, "")


class ThreadPool(Pool):
    """Threads that take jobs from one queue. A job waits in that queue, not on the
    event loop, so a thread that finishes takes the next one at once: a busy worker
    hands work over without a wake-up of the loop per task. The queue holds only what
    this worker was delivered (its prefetch window), all of it for whichever thread
    is free first: no message waits behind a long task while another thread idles."""

    name = "threads"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str) -> None:
        super().__init__(app, concurrency, codec, serializer)
        self._threads = _Threads(concurrency)

    async def run(self, task: "Task", request: Request, limits: Limits, start: JobStart | None = None) -> Outcome:
        loop = asyncio.get_running_loop()
        running = _RunningThread()
        # Only tasks with limits pay for the thread's "started" wake-up of the loop.
        started = loop.create_future() if limits.soft or limits.hard else None

        def job() -> Outcome:
            reason = begin_in_thread(start, loop)
            if reason is not None:
                return not_started(reason)
            running.begin(loop, started)
            try:
                return run_sync(task, request, self.codec, self.serializer)
            finally:
                running.end()

        future = self._threads.submit(contextvars.copy_context().run, job)
        if started is None:
            return await future  # cancelled with the awaiting task: the thread's result is dropped
        return await self._limited(task, request, limits, future, started, running)

    async def _limited(self, task: "Task", request: Request, limits: Limits, future: asyncio.Future,
                       started: asyncio.Future, running: "_RunningThread") -> Outcome:
        await asyncio.wait((started, future), return_when=asyncio.FIRST_COMPLETED)
        if future.done():  # not started, or done before the loop heard it start
            return await asyncio.shield(future)
        loop = asyncio.get_running_loop()
        soft_timer = loop.call_later(limits.soft, running.interrupt) if limits.soft else None
        try:
            if limits.hard:
                try:
                    return await asyncio.wait_for(asyncio.shield(future), limits.hard)
                except asyncio.TimeoutError:
                    log.error("task %s[%s] passed its hard time limit (%ss); its thread runs on until it returns",
                              task.name, request.id, limits.hard)
                    self._threads.hung(running.ident)
                    if self.on_hung is not None:
                        self.on_hung(task.name, request.id)
                    return self.time_limit_outcome(request, TimeLimitExceeded(f"hard time limit ({limits.hard}s)"))
            return await asyncio.shield(future)
        finally:
            if soft_timer:
                soft_timer.cancel()

    def withdraw(self) -> None:
        self._threads.withdraw()

    async def stop(self, *, cold: bool = False) -> None:
        await self._threads.stop(cold=cold)

    @property
    def resizable(self) -> bool:
        return self.name == "threads"

    def grow(self, n: int) -> None:
        if not self.resizable:
            super().grow(n)
        if n <= 0:
            return
        self._threads.add(n)
        self.concurrency += n

    def shrink(self, n: int) -> None:
        if not self.resizable:
            super().shrink(n)
        n = min(n, self.concurrency - 1)
        if n <= 0:
            return
        self.concurrency -= n
        for _ in range(n):
            self._threads.remove_one()


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
        self._hung: set[int] = set()  # threads still running a task past its hard time limit

    def add(self, count: int) -> None:
        new = [threading.Thread(target=self._work, name=f"amqtask-task-{len(self._threads) + i}", daemon=True)
               for i in range(count)]
        self._threads.extend(new)
        if self._started:
            for thread in new:
                thread.start()

    def remove_one(self) -> None:
        """One thread ends when it next takes work (its slot was taken out of use)."""
        self._jobs.put(None)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        if not self._started:
            self._loop = asyncio.get_running_loop()
            for thread in self._threads:
                thread.start()
            self._started = True
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((future, fn, args))
        return future

    def hung(self, ident: int | None) -> None:
        """The thread `ident` runs a task past its hard time limit (a warm stop does not wait for it)."""
        if ident is not None:
            self._hung.add(ident)

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
            self._hung.discard(threading.get_ident())
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

    def withdraw(self) -> None:
        """Jobs no thread has taken end NOT_STARTED (WITHDRAWN) now; threads waiting to
        leave (shrink) still do."""
        for item in self._take_queued():
            if not item[0].done():
                item[0].set_result(not_started(WITHDRAWN))

    def _take_queued(self) -> list[tuple[asyncio.Future, Callable[..., Any], tuple]]:
        """Empty the queue of jobs; the sentinels of threads leaving go back in."""
        jobs, leaving = [], 0
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is None:
                leaving += 1
            else:
                jobs.append(item)
        for _ in range(leaving):
            self._jobs.put(None)
        return jobs

    async def stop(self, *, cold: bool = False) -> None:
        """Warm: let queued and running jobs finish, then end the threads. Cold: end
        them as soon as they are idle; the process exits without waiting for them."""
        if cold:
            for item in self._take_queued():  # jobs nobody started: their messages go back to the queue
                if not item[0].done():
                    item[0].set_result(Outcome(CANCELLED, reason="cold shutdown"))
        for _ in self._threads:
            self._jobs.put(None)
        if not cold and self._started:
            loop = asyncio.get_running_loop()
            for thread in self._threads:
                if thread.ident in self._hung:  # it may never return: the process exits without it
                    log.warning("thread %s still runs a task past its hard time limit; not waiting for it",
                                thread.name)
                    continue
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

    def begin(self, loop: asyncio.AbstractEventLoop, started: asyncio.Future | None) -> None:
        with self._lock:
            self._ident = threading.get_ident()
        if started is not None:
            loop.call_soon_threadsafe(_set_if_pending, started)

    def end(self) -> None:
        with self._lock:
            self._ident = None

    @property
    def ident(self) -> int | None:
        return self._ident

    def interrupt(self) -> None:
        with self._lock:
            if self._ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._ident), ctypes.py_object(SoftTimeLimitExceeded)
                )


def _set_if_pending(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class AsyncioPool(Pool):
    name = "asyncio"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str) -> None:
        self._threads = ThreadPool(app, min(32, concurrency), codec, serializer)  # plain functions run here
        super().__init__(app, concurrency, codec, serializer)

    @property  # type: ignore[override]
    def on_hung(self) -> Callable[[str, str], None] | None:
        return self._threads.on_hung

    @on_hung.setter
    def on_hung(self, callback: Callable[[str, str], None] | None) -> None:
        self._threads.on_hung = callback

    async def run(self, task: "Task", request: Request, limits: Limits, start: JobStart | None = None) -> Outcome:
        if not task.is_async:  # plain functions wait for one of the threads
            return await self._threads.run(task, request, limits, start)
        reason = await self._acquire(start)
        if reason is not None:
            return not_started(reason)
        try:
            first = min((x for x in (limits.soft, limits.hard) if x), default=None)
            try:
                return await asyncio.wait_for(run_async(task, request, self.codec, self.serializer), first)
            except asyncio.TimeoutError:
                kind = SoftTimeLimitExceeded if first == limits.soft else TimeLimitExceeded
                return self.time_limit_outcome(request, kind(f"time limit ({first}s): the coroutine was cancelled"))
        finally:
            self._free.release()

    def withdraw(self) -> None:
        self._threads.withdraw()

    async def stop(self, *, cold: bool = False) -> None:
        await self._threads.stop(cold=cold)


# -- prefork -------------------------------------------------------------------------


def child_signal(signum: int) -> int:
    """The signal the pool sends a child when revoke with terminate asks for `signum`.

    TERM and INT, which children ignore so that a signal to the whole process group
    leaves tasks running, become KILL; any other signal is sent as asked (ALRM, for
    instance, raises SoftTimeLimitExceeded in the task). KILL does what TERM does to
    a Celery child, whose TERM is left at its default: the process ends at once and
    no Python code runs. The alternatives were worse: a handler for another signal
    runs only when the task's main thread gets back to the interpreter (a task
    blocked in C code would not stop), and a thread waiting for TERM to read who sent
    it needs TERM blocked in every thread, a mask the task's subprocesses inherit."""
    return int(signal.SIGKILL) if signum in SIGNALS_CHILDREN_IGNORE else signum


def _child_main(conn: multiprocessing.connection.Connection, app: "App", codec: Codec, serializer: str,
                max_tasks: int | None, max_memory_kib: int | None, parent: int) -> None:
    """A child's life: take a job, run it, send the Outcome back; retire when told
    to by the limits. Signals are the parent's business."""
    signal.set_wakeup_fd(-1)  # the parent's event loop owns the inherited wake-up pipe
    # The parent's connection dies with it and the broker redelivers this task
    # elsewhere: a child left running would run it twice.
    die_with_parent(signal.SIGKILL, parent)
    # The parent decides when children stop (a sentinel, or SIGKILL on cold shutdown):
    # a terminal's Ctrl-C or a service manager's SIGTERM to the whole group must not
    # kill tasks mid-run while the parent is finishing warmly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def soft_limit(signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded("soft time limit exceeded")

    signal.signal(signal.SIGALRM, soft_limit)
    signals.worker_process_init.send(sender=None)  # Celery's hook for per-process setup (DB connections...)
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
            outcome = failure(None, request, exc, 0.0, "")
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
        self.task_id: str | None = None  # the task it runs now
        self.timed_out = False
        self.retiring = False
        self.removed = False  # retired by a shrink: not replaced


class PreforkPool(Pool):
    name = "prefork"

    def __init__(self, app: "App", concurrency: int, codec: Codec, serializer: str, *,
                 max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None,
                 metrics: NullMetrics | None = None) -> None:
        super().__init__(app, concurrency, codec, serializer)
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.metrics = metrics or NullMetrics()
        self._context = multiprocessing.get_context("fork")
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._stopping = False

    async def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn()

    def _spawn(self) -> None:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main, name="amqtask-child", daemon=True,
            args=(child_conn, self.app, self.codec, self.serializer, self.max_tasks_per_child,
                  self.max_memory_per_child, os.getpid()),
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

    def pids(self) -> list[int]:
        return self.child_pids()

    def pid_of(self, task_id: str) -> int | None:
        return next((c.process.pid for c in self._children if c.task_id == task_id), None)

    def terminate(self, task_id: str, signum: int) -> bool:
        child = next((c for c in self._children if c.task_id == task_id), None)
        if child is None or child.process.pid is None:
            return False
        sent = child_signal(signum)
        log.info("terminating task %s: signal %s to child %s%s", task_id, signum, child.process.pid,
                 f" (sent as {sent}: children ignore {signum})" if sent != signum else "")
        os.kill(child.process.pid, sent)  # its death is a lost worker; the handler reports it revoked
        return True

    @property
    def resizable(self) -> bool:
        return True

    def grow(self, n: int) -> None:
        if n <= 0:
            return
        for _ in range(n):
            self._spawn()
            self._free.release()
        self.concurrency += n

    def shrink(self, n: int) -> None:
        n = min(n, self.concurrency - 1)
        if n <= 0:
            return
        self.concurrency -= n
        self._shrink_slots(n, self._retire_idle)

    def _retire_idle(self) -> None:
        """A slot was taken out of use: one idle child leaves for good."""
        for child in self._children:
            if child.future is None and not child.retiring and not child.removed:
                child.removed = True
                child.retiring = True
                try:
                    child.conn.send(None)
                except OSError:
                    pass
                return

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
            if self._stopping:  # killed by a cold shutdown: not a failure, the message goes back
                future.set_result(Outcome(CANCELLED, reason="cold shutdown"))
            elif child.timed_out:
                future.set_result(Outcome(FAILURE, reason="TimeLimitExceeded: hard time limit; the child was killed"))
            else:
                code = child.process.exitcode
                future.set_result(Outcome(WORKER_LOST, reason=f"WorkerLostError: child exited with status {code}",
                                          exc_payload=exception_payload(WorkerLostError(f"exit status {code}"))))
        child.conn.close()
        if not self._stopping and not child.removed:
            if not child.retiring:  # it died (a crash, a kill, a hard time limit, revoke with terminate)
                log.warning("pool child %s exited (status %s); starting a new one",
                            child.process.pid, child.process.exitcode)
                self.metrics.pool_child_replaced()
            self._spawn()

    async def run(self, task: "Task", request: Request, limits: Limits, start: JobStart | None = None) -> Outcome:
        reason = await self._acquire(start)  # a slot: a child that is (or, respawning, will be) idle
        if reason is not None:
            return not_started(reason)
        try:
            return await self._run(task, request, limits)
        finally:
            self._free.release()

    async def _run(self, task: "Task", request: Request, limits: Limits) -> Outcome:
        child = await self._idle.get()
        while child not in self._children or child.retiring:
            child = await self._idle.get()
        loop = asyncio.get_running_loop()
        child.future = loop.create_future()
        child.task_id = request.id
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
            child.task_id = None
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
              max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None,
              metrics: NullMetrics | None = None) -> Pool:
    """`metrics` hears of prefork children that died and were replaced."""
    if name == "prefork":
        return PreforkPool(app, concurrency, codec, serializer, max_tasks_per_child=max_tasks_per_child,
                           max_memory_per_child=max_memory_per_child, metrics=metrics)
    pools = {"threads": ThreadPool, "solo": SoloPool, "asyncio": AsyncioPool}
    return pools[name](app, concurrency, codec, serializer)
