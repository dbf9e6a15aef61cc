"""What routing.yaml says, as frozen data: broker, defaults, topology, routes, task
options and worker defaults. Built by `amqtask.topology.loader`; read by everyone else."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from .brokerurl import BrokerURL
from .serializers import DEFAULT_MAX_BYTES
from .schedules import MISSED_POLICIES, SCHEDULE_OPTION_NAMES, Schedule  # noqa: F401 (the first two re-exported)
from .topology.model import Topology

SERIALIZERS = ("json", "msgpack", "yaml", "pickle")
COMPRESSIONS = ("zlib", "bzip2")


@dataclass(frozen=True)
class TaskOptions:
    """Per-task execution options; None means "not set here, ask the next layer"."""

    serializer: str | None = None
    compression: str | None = None
    priority: int | None = None
    rate_limit: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    max_retries: int | None = None
    default_retry_delay: float | None = None
    acks_late: bool | None = None
    reject_on_worker_lost: bool | None = None
    ignore_result: bool | None = None
    expires: float | None = None

    def merged_over(self, lower: "TaskOptions") -> "TaskOptions":
        """These options, with `lower`'s filling whatever is unset here."""
        return replace(
            lower, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        )


TASK_OPTION_NAMES = tuple(f.name for f in fields(TaskOptions))


@dataclass(frozen=True)
class RouteRule:
    """One entry of `routes:`; the first rule whose pattern matches a task name wins."""

    pattern: str
    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None
    priority: int | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    options: TaskOptions = field(default_factory=TaskOptions)
    line: int = 0

    @property
    def kind(self) -> str:
        if self.pattern.startswith("re:"):
            return "regex"
        if any(c in self.pattern for c in "*?["):
            return "glob"
        return "exact"

    def matches(self, task_name: str) -> bool:
        if self.kind == "regex":
            return re.fullmatch(self.pattern[3:], task_name) is not None
        if self.kind == "glob":
            return fnmatch.fnmatchcase(task_name, self.pattern)
        return task_name == self.pattern


@dataclass(frozen=True)
class Defaults:
    exchange: str = ""
    routing_key: str = "default"
    queue: str | None = None
    serializer: str = "json"
    compression: str | None = None
    persistent: bool = True


@dataclass(frozen=True)
class TLSSettings:
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    server_hostname: str | None = None


@dataclass(frozen=True)
class BrokerSettings:
    urls: tuple[BrokerURL, ...] = (BrokerURL(),)
    confirm_publish: bool = True
    connect_timeout: float = 5.0
    publish_timeout: float = 10.0
    heartbeat: int = 60
    publish_retries: int = 3
    accept_content: tuple[str, ...] = ("json", "msgpack", "yaml")
    tls: TLSSettings = field(default_factory=TLSSettings)
    max_message_bytes: int = DEFAULT_MAX_BYTES  # a body (decompressed) larger than this is dead-lettered


@dataclass(frozen=True)
class ResultSettings:
    """Where task results go. As in Celery, results are off unless a backend is named:
    `backend` is rpc:// (reply queues on the broker), redis://, rediss://,
    sentinel:// or db+postgresql://. `enabled: true` without a backend means rpc://;
    `enabled: false` turns results off whatever the backend."""

    backend: str | None = None
    enabled: bool | None = None
    expires_ms: int = 86_400_000  # results (and unused reply queues) live this long
    serializer: str = "json"
    extended: bool = False  # also store name, args, kwargs, worker, retries, queue (Celery's result_extended)
    table_names: Mapping[str, str] = field(default_factory=dict)  # PostgreSQL: {"task": ..., "group": ...}
    rpc_max_pending: int = 10_000  # rpc://: results remembered per client (and held in its reply queue)

    @property
    def url(self) -> str | None:
        """The backend in effect, or None when results are off."""
        if self.enabled is False:
            return None
        if self.backend:
            return self.backend
        return "rpc://" if self.enabled else None

    @property
    def expires_seconds(self) -> int:
        return max(1, self.expires_ms // 1000)


CONTROL_MODES = ("all", "read-only", "off")


@dataclass(frozen=True)
class MonitorSettings:
    """How a worker shows itself to Flower, Celery's CLI and Prometheus (the
    `worker:` keys `events`, `heartbeat_interval`, `control`, `metrics_port`,
    `revoked_stream`)."""

    events: bool = False  # task events (Celery's -E); worker events follow heartbeat_interval
    heartbeat_interval: float = 2.0  # seconds between worker-heartbeat events; 0 sends no worker events
    control: str = "all"  # remote control: all, read-only (inspect only) or off
    metrics_port: int | None = None  # serve Prometheus metrics on this port
    revoked_stream: str | None = "amqtask.revoked"  # where revocations outlive restarts; None keeps them in memory


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int | None = None  # in all, spread over the processes; None: per pool (worker/sizing.py)
    processes: int | str = "auto"  # complete workers under one command, each its own connection; auto: one per CPU
    pool: str = "threads"
    prefetch_multiplier: int = 4
    optimization: str = "fair"
    queues: tuple[str, ...] = ()
    exclude_queues: tuple[str, ...] = ()
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # KiB
    time_limit: float | None = None
    soft_time_limit: float | None = None
    loglevel: str = "INFO"
    name: str | None = None
    monitor: MonitorSettings = field(default_factory=MonitorSettings)


@dataclass(frozen=True)
class ScheduleEntry:
    """One periodic task: `schedules.NAME` in routing.yaml or `app.add_periodic_task(...)`.

    `options` holds apply_async options by name (seconds for countdown and expires);
    `missed` says what happens to runs that came due while no beat was leading."""

    name: str
    task: str
    schedule: Schedule
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    missed: str = "run_once"
    jitter: float = 0.0  # seconds: each run is delayed by a fixed share of this, derived from its id
    line: int = 0  # where routing.yaml defines it; 0 for schedules built in code


@dataclass(frozen=True)
class BeatSettings:
    """Beats with the same group on one vhost elect one leader among themselves."""

    group: str = "default"


@dataclass(frozen=True)
class Settings:
    topology: Topology = field(default_factory=Topology)
    routes: tuple[RouteRule, ...] = ()
    tasks: Mapping[str, TaskOptions] = field(default_factory=dict)
    defaults: Defaults = field(default_factory=Defaults)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    results: ResultSettings = field(default_factory=ResultSettings)
    timezone: str = "UTC"  # IANA name: crontab and `at` times are wall-clock times there
    schedules: tuple[ScheduleEntry, ...] = ()
    beat: BeatSettings = field(default_factory=BeatSettings)
    source: str = "<memory>"
