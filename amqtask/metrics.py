"""Prometheus metrics for workers (prometheus-client; `pip install 'amqtask[metrics]'`).

The worker records what happens through the small API of `Metrics` (a no-op
`NullMetrics` when no metrics port is set, so the calls cost nothing then) and
serves them over HTTP with `serve(port)`.

Under `--processes N`, every process records into prometheus-client's
multiprocess mode and the supervising process serves one endpoint that adds them
up: `prepare_multiprocess()` in the supervisor before it forks, `serve(port,
multiprocess_dir=...)` there, `process_died(pid, ...)` when it reaps a child, and
`cleanup(...)` at exit. Why this and not aggregation by the supervisor: the
library already does it correctly (counters of dead processes stay in the sums,
so totals never go backwards when a process is replaced; live gauges drop with
their process), each process writes to its own memory-mapped file with no
message passing, and the endpoint keeps answering while a process restarts.

Metrics (all prefixed `amqtask_`):
    tasks_total{task,state}              received, started, succeeded, failed, retried, revoked, rejected
    task_runtime_seconds{task}           histogram of run times
    tasks_in_flight                      messages delivered and not yet settled
    prefetch_window                      the prefetch count in force, summed over consumers
    acks_total / ack_frames_total        messages acknowledged, and basic.ack frames that carried them
    dead_letters_total{reason}           by kind of reason (undecodable, unknown_task, failed, ...)
    reconnects_total                     connections re-opened after a loss
    publish_confirms_total / publish_nacks_total / publish_returns_total
    pool_children_replaced_total         pool children (or worker processes) that died and were replaced
    events_dropped_total{reason}         events not sent: buffer_full, broker_blocked, connection_lost
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from .errors import AmqtaskError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TASK_STATES = ("received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
# Runtime buckets from 5 ms to 10 minutes: task queues run both quick and long jobs.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Dead-letter reasons are free text; their label is one of these kinds, so that a
# stream of hostile messages cannot create unbounded series.
DEAD_LETTER_KINDS = (
    ("undecodable", "undecodable"), ("content type", "content_type"), ("unknown task", "unknown_task"),
    ("canvas", "canvas"), ("header", "bad_header"), ("too large", "too_large"), ("expired", "expired"),
)


class MetricsUnavailable(AmqtaskError):
    """Metrics were asked for but cannot be served (prometheus-client missing, port in use...)."""


def dead_letter_kind(reason: str) -> str:
    """The bounded label for a dead-letter reason; a task's own failure is 'failed'."""
    lowered = reason.lower()
    for needle, kind in DEAD_LETTER_KINDS:
        if needle in lowered:
            return kind
    return "failed"


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MetricsUnavailable("metrics need prometheus-client: pip install 'amqtask[metrics]'") from None
    return prometheus_client


class NullMetrics:
    """Records nothing: what a worker uses without a metrics port."""

    def task_received(self, name: str) -> None: ...

    def task_started(self, name: str) -> None: ...

    def task_finished(self, name: str, state: str, runtime: float | None = None) -> None: ...

    def set_in_flight(self, count: int) -> None: ...

    def set_prefetch_window(self, count: int) -> None: ...

    def acks_sent(self, messages: int, frames: int = 1) -> None: ...

    def dead_lettered(self, reason: str) -> None: ...

    def reconnected(self) -> None: ...

    def publish_confirmed(self, count: int = 1) -> None: ...

    def publish_nacked(self, count: int = 1) -> None: ...

    def publish_returned(self, count: int = 1) -> None: ...

    def pool_child_replaced(self) -> None: ...

    def events_dropped(self, reason: str, count: int = 1) -> None: ...


class Metrics(NullMetrics):
    """The recording API, backed by prometheus-client. Thread-safe (the library's
    metrics are); every method is cheap enough for the per-message path."""

    def __init__(self, registry: Any = None) -> None:
        prom = _prometheus()
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        r = self.registry
        self._tasks = prom.Counter("amqtask_tasks", "Tasks by name and state", ["task", "state"], registry=r)
        self._runtime = prom.Histogram("amqtask_task_runtime_seconds", "Task run time", ["task"],
                                       buckets=RUNTIME_BUCKETS, registry=r)
        self._in_flight = prom.Gauge("amqtask_tasks_in_flight", "Messages delivered and not yet settled",
                                     registry=r, multiprocess_mode="livesum")
        self._prefetch = prom.Gauge("amqtask_prefetch_window", "Prefetch count in force, summed over consumers",
                                    registry=r, multiprocess_mode="livesum")
        self._acks = prom.Counter("amqtask_acks", "Messages acknowledged", registry=r)
        self._ack_frames = prom.Counter("amqtask_ack_frames", "basic.ack frames sent (one may ack many)",
                                        registry=r)
        self._dead = prom.Counter("amqtask_dead_letters", "Messages dead-lettered, by kind of reason", ["reason"],
                                  registry=r)
        self._reconnects = prom.Counter("amqtask_reconnects", "Broker connections re-opened after a loss",
                                        registry=r)
        self._confirms = prom.Counter("amqtask_publish_confirms", "Publishes confirmed by the broker", registry=r)
        self._nacks = prom.Counter("amqtask_publish_nacks", "Publishes the broker refused (nack)", registry=r)
        self._returns = prom.Counter("amqtask_publish_returns", "Publishes returned unroutable", registry=r)
        self._replaced = prom.Counter("amqtask_pool_children_replaced",
                                      "Pool children or worker processes that died and were replaced", registry=r)
        self._dropped = prom.Counter("amqtask_events_dropped", "Events not sent, by reason", ["reason"], registry=r)
        self._children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _task(self, name: str, state: str) -> Any:
        # labels() takes a lock and builds a key each time; the children are kept
        # ("runtime" is the histogram's child for the task)
        child = self._children.get((name, state))
        if child is None:
            with self._lock:
                child = self._runtime.labels(name) if state == "runtime" else self._tasks.labels(name, state)
                self._children[(name, state)] = child
        return child

    def task_received(self, name: str) -> None:
        self._task(name, "received").inc()

    def task_started(self, name: str) -> None:
        self._task(name, "started").inc()

    def task_finished(self, name: str, state: str, runtime: float | None = None) -> None:
        """`state`: succeeded, failed, retried, revoked or rejected; `runtime` in
        seconds when the task ran."""
        if state not in TASK_STATES:
            raise ValueError(f"unknown task state {state!r}; one of {', '.join(TASK_STATES)}")
        self._task(name, state).inc()
        if runtime is not None:
            self._task(name, "runtime").observe(runtime)

    def set_in_flight(self, count: int) -> None:
        self._in_flight.set(count)

    def set_prefetch_window(self, count: int) -> None:
        self._prefetch.set(count)

    def acks_sent(self, messages: int, frames: int = 1) -> None:
        """One basic.ack (or `frames` of them) settling `messages` deliveries."""
        self._acks.inc(messages)
        self._ack_frames.inc(frames)

    def dead_lettered(self, reason: str) -> None:
        self._dead.labels(dead_letter_kind(reason)).inc()

    def reconnected(self) -> None:
        self._reconnects.inc()

    def publish_confirmed(self, count: int = 1) -> None:
        self._confirms.inc(count)

    def publish_nacked(self, count: int = 1) -> None:
        self._nacks.inc(count)

    def publish_returned(self, count: int = 1) -> None:
        self._returns.inc(count)

    def pool_child_replaced(self) -> None:
        self._replaced.inc()

    def events_dropped(self, reason: str, count: int = 1) -> None:
        self._dropped.labels(reason).inc(count)


@dataclass
class MetricsServer:
    """The HTTP endpoint (GET /metrics, or any path) on `port`."""

    port: int
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def close_inherited(self) -> None:
        """In a forked child: close the listening socket it inherited. (The serving
        thread stayed in the parent; `close()` would wait for it forever.)"""
        self._server.server_close()


def serve(port: int, *, address: str = "0.0.0.0", registry: Any = None,
          multiprocess_dir: str | None = None) -> MetricsServer:
    """Serve `registry` (a Metrics' registry), or with `multiprocess_dir` the sum
    of every process writing there, on `address:port` (port 0: any free port)."""
    prom = _prometheus()
    if multiprocess_dir is not None:
        from prometheus_client import multiprocess

        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
    if registry is None:
        raise ValueError("serve() needs a registry or a multiprocess_dir")
    try:
        server, thread = prom.start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise MetricsUnavailable(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from None
    return MetricsServer(server.server_address[1], server, thread)


def prepare_multiprocess(directory: str | None = None) -> str:
    """Set up multiprocess mode in a supervisor, before it forks its processes and
    before anything imports prometheus_client (the library picks its storage at
    import). Returns the directory the processes write to (a new, empty one)."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None and getattr(values, "ValueClass", None) is getattr(values, "MutexValue", None):
        raise MetricsUnavailable("prometheus_client was imported before multiprocess metrics were set up; "
                                 "call prepare_multiprocess() first")
    _prometheus_spec_check()
    directory = directory or tempfile.mkdtemp(prefix="amqtask-metrics-")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # stale files from an earlier run would be added in
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))
    os.environ[MULTIPROC_ENV] = directory
    return directory


def _prometheus_spec_check() -> None:
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise MetricsUnavailable("metrics need prometheus-client: pip install 'amqtask[metrics]'")


def process_died(pid: int, directory: str) -> None:
    """A process of a multiprocess set ended: its live gauges leave the sums (its
    counters stay, so totals never go backwards)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


def cleanup(directory: str) -> None:
    """Remove the multiprocess directory and its files."""
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == directory:
        del os.environ[MULTIPROC_ENV]
