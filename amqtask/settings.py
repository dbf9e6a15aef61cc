"""What routing.yaml says, as frozen data: broker, defaults, topology, routes, task
options and worker defaults. Built by `amqtask.topology.loader`; read by everyone else."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from .brokerurl import BrokerURL
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


@dataclass(frozen=True)
class ResultSettings:
    """Results travel back over RabbitMQ (Celery's rpc format) to a reply queue per client."""

    enabled: bool = True
    expires_ms: int = 86_400_000  # an unused reply queue is deleted after this long
    serializer: str = "json"


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int | None = None  # None: the number of CPUs
    processes: int = 1  # complete workers under one command, each with its own connection
    pool: str = "prefork"
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


@dataclass(frozen=True)
class Settings:
    topology: Topology = field(default_factory=Topology)
    routes: tuple[RouteRule, ...] = ()
    tasks: Mapping[str, TaskOptions] = field(default_factory=dict)
    defaults: Defaults = field(default_factory=Defaults)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    results: ResultSettings = field(default_factory=ResultSettings)
    source: str = "<memory>"
