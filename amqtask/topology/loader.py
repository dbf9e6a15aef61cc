"""routing.yaml -> Settings, with every problem reported as `file:line:column`.

Validation never stops at the first problem: it walks the whole file, collecting
errors (the file is unusable) and warnings (it works but probably not as meant),
so a user fixes everything in one pass.
"""
from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, Collection, Mapping

from ..brokerurl import BrokerURLError, parse_broker_urls
from ..errors import ConfigError, ScheduleError
from ..schedules import (
    REFUSED_OPTIONS,
    SCHEDULE_OPTION_NAMES,
    Schedule,
    at,
    crontab,
    every,
    parse_crontab,
    parse_duration,
    schedule_option,
    unread_results_reason,
    zone,
)
from ..settings import (
    COMPRESSIONS,
    MISSED_POLICIES,
    SERIALIZERS,
    TASK_OPTION_NAMES,
    BeatSettings,
    BrokerSettings,
    Defaults,
    ResultSettings,
    RouteRule,
    ScheduleEntry,
    Settings,
    TaskOptions,
    TLSSettings,
    WorkerSettings,
)
from ..settings import CONTROL_MODES, MonitorSettings
from ..worker.delays import unparkable_reason
from .model import DEFAULT_EXCHANGE, EXCHANGE_TYPES, Binding, Exchange, Queue, Topology
from .yamlsource import Document, Position, load_document

DEFAULT_CONFIG = "routing.yaml"
CONFIG_ENV = "AMQTASK_CONFIG"
BROKER_ENV = "AMQTASK_BROKER_URL"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"

SECTIONS = ("broker", "defaults", "exchanges", "queues", "routes", "tasks", "worker", "results", "timezone",
            "schedules", "beat")
SCHEDULE_KEYS = ("task", "every", "crontab", "at", "args", "kwargs", "options", "missed", "jitter")
BEAT_KEYS = ("group",)
RESULTS_KEYS = ("backend", "enabled", "expires", "serializer", "extended", "table_names", "rpc_max_pending")
RESULT_SCHEMES = ("rpc", "redis", "rediss", "sentinel", "db+postgresql", "db+postgres")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
BROKER_KEYS = (
    "url", "confirm_publish", "connect_timeout", "publish_timeout", "heartbeat", "publish_retries",
    "accept_content", "tls", "max_message_bytes",
)
TLS_KEYS = ("ca_certs", "certfile", "keyfile", "verify", "server_hostname")
DEFAULTS_KEYS = ("exchange", "queue", "routing_key", "serializer", "compression", "persistent")
EXCHANGE_KEYS = ("type", "durable", "auto_delete", "internal", "alternate_exchange", "arguments", "bindings")
QUEUE_KEYS = (
    "bindings", "durable", "exclusive", "auto_delete", "queue_type", "max_priority", "message_ttl", "expires",
    "max_length", "max_length_bytes", "overflow", "dead_letter_exchange", "dead_letter_routing_key",
    "single_active_consumer", "arguments",
)
BINDING_KEYS = ("exchange", "routing_key", "arguments")
ROUTE_KEYS = ("task", "exchange", "routing_key", "queue", "priority", "headers", "options")
WORKER_KEYS = (
    "concurrency", "processes", "pool", "prefetch_multiplier", "optimization", "queues", "exclude_queues",
    "max_tasks_per_child", "max_memory_per_child", "time_limit", "soft_time_limit", "loglevel", "name",
) + ("events", "heartbeat_interval", "control", "metrics_port", "revoked_stream")
POOLS = ("prefork", "threads", "asyncio", "solo")
OVERFLOWS = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum", "stream")
X_MATCH = ("all", "any", "all-with-x", "any-with-x")
LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# routing.yaml key -> RabbitMQ queue argument
QUEUE_ARGUMENTS = {
    "queue_type": "x-queue-type",
    "max_priority": "x-max-priority",
    "message_ttl": "x-message-ttl",
    "expires": "x-expires",
    "max_length": "x-max-length",
    "max_length_bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead_letter_exchange": "x-dead-letter-exchange",
    "dead_letter_routing_key": "x-dead-letter-routing-key",
    "single_active_consumer": "x-single-active-consumer",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
RATE_LIMIT = re.compile(r"^\d+(\.\d+)?(/[smh])?$")
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class Problem:
    source: str
    position: Position
    severity: str  # "error" | "warning"
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.source}:{self.position.line}:{self.position.column}: {self.severity}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


@dataclass(frozen=True)
class LoadResult:
    settings: Settings | None
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def resolve_config_path(path: str | os.PathLike | None = None) -> FsPath:
    """The explicit path, else $AMQTASK_CONFIG, else ./routing.yaml."""
    return FsPath(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate routing.yaml; raise ConfigError listing every error."""
    result = check_file(path, environ)
    if result.errors or result.settings is None:
        raise ConfigError(result.errors)
    return result.settings


def check_file(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None, *,
               tasks: Collection[str] | None = None) -> LoadResult:
    """Check a file. `tasks`: the task names the app registers (`-A`), so that a
    schedule naming an unknown task is reported."""
    file = resolve_config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problem = Problem(str(file), Position(1, 1), "error", f"cannot read the configuration: {reason}",
                          f"pass --config PATH or set {CONFIG_ENV}")
        return LoadResult(None, (problem,))
    return check_text(text, source=str(file), environ=environ, tasks=tasks)


def check_text(text: str, source: str = "<string>", environ: Mapping[str, str] | None = None, *,
               tasks: Collection[str] | None = None) -> LoadResult:
    doc = load_document(text, environ)
    checker = _Checker(doc, source, tasks)
    for where, message, hint in doc.errors:
        checker.problems.append(Problem(source, where, "error", message, hint))
    if doc.data is None and doc.errors:
        return LoadResult(None, tuple(checker.problems))
    settings = checker.build()
    ok = not any(p.severity == "error" for p in checker.problems)
    ordered = tuple(sorted(checker.problems, key=lambda p: (p.position, p.severity)))
    return LoadResult(settings if ok else None, ordered)


def parse_duration_ms(value: Any) -> int | None:
    """Milliseconds from an integer (already ms) or a string like "30s", "5m", "2d", "250ms"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(float(match.group(1)) * _DURATION_MS[match.group(2) or "ms"])
    return None


def result_backend_problem(url: str) -> str:
    """Why `url` is not a result backend URL amqtask can use, or "" when it is."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    family = scheme.split("+")[0] if not scheme.startswith("db+") else "+".join(scheme.split("+")[:2])
    if family not in RESULT_SCHEMES:
        shown = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)
        return f"unknown result backend {shown!r}"
    return ""


class _Checker:
    """Walks the parsed document section by section, recording problems as it goes."""

    def __init__(self, doc: Document, source: str, tasks: Collection[str] | None = None) -> None:
        self.doc = doc
        self.source = source
        self.tasks = tasks
        self.problems: list[Problem] = []
        # (source, destination, key, to_exchange) -> the YAML path of the binding, for messages
        self._binding_paths: dict[tuple, tuple] = {}

    # -- reporting ---------------------------------------------------------------
    def error(self, path: tuple, message: str, hint: str = "") -> None:
        self.problems.append(Problem(self.source, self.doc.position(path), "error", message, hint))

    def warn(self, path: tuple, message: str, hint: str = "") -> None:
        self.problems.append(Problem(self.source, self.doc.position(path), "warning", message, hint))

    def unknown_keys(self, mapping: Mapping, path: tuple, allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
                self.error(path + (key,), f"unknown key {key!r} in {where}", hint)

    def mapping(self, value: Any, path: tuple, what: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"{what} must be a mapping, not {_kind(value)}")
            return {}
        return value

    def sequence(self, value: Any, path: tuple, what: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"{what} must be a list, not {_kind(value)}")
            return []
        return value

    def typed(self, mapping: Mapping, path: tuple, key: str, kind: type | tuple, default: Any = None,
              choices: tuple | None = None) -> Any:
        """mapping[key] checked against `kind` (and `choices`); `default` when absent or wrong."""
        if key not in mapping or mapping[key] is None:
            return default
        value = mapping[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(_TYPE_NAMES[k] for k in kinds)
            self.error(path + (key,), f"{key!r} must be {names}, not {_kind(value)}")
            return default
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"one of: {', '.join(map(str, choices))}"
            self.error(path + (key,), f"{key!r} must be one of {', '.join(map(str, choices))}, not {value!r}", hint)
            return default
        return value

    # -- sections ----------------------------------------------------------------
    def build(self) -> Settings:
        root = self.mapping(self.doc.data, (), "the configuration file")
        self.unknown_keys(root, (), SECTIONS, "the top level")
        broker = self.build_broker(self.mapping(root.get("broker"), ("broker",), "'broker'"))
        exchanges, e2e = self.build_exchanges(self.mapping(root.get("exchanges"), ("exchanges",), "'exchanges'"))
        queues, q_bindings = self.build_queues(self.mapping(root.get("queues"), ("queues",), "'queues'"))
        topology = Topology.build(exchanges.values(), queues.values(), e2e + q_bindings)
        self.check_topology(topology)
        defaults = self.build_defaults(self.mapping(root.get("defaults"), ("defaults",), "'defaults'"), topology)
        routes = self.build_routes(self.sequence(root.get("routes"), ("routes",), "'routes'"), topology, defaults)
        tasks = self.build_tasks(self.mapping(root.get("tasks"), ("tasks",), "'tasks'"))
        worker = self.build_worker(self.mapping(root.get("worker"), ("worker",), "'worker'"), topology)
        results = self.build_results(self.mapping(root.get("results"), ("results",), "'results'"))
        self.check_reachability(topology, defaults, routes)
        self.check_cluster(topology, broker)
        timezone = self.build_timezone(root)
        schedules = self.build_schedules(self.mapping(root.get("schedules"), ("schedules",), "'schedules'"),
                                         timezone, topology, defaults, routes, results)
        beat = self.build_beat(self.mapping(root.get("beat"), ("beat",), "'beat'"))
        return Settings(topology=topology, routes=tuple(routes), tasks=tasks, defaults=defaults, broker=broker,
                        worker=worker, results=results, timezone=timezone, schedules=schedules, beat=beat,
                        source=self.source)

    # -- periodic tasks ------------------------------------------------------------
    def build_timezone(self, root: Mapping) -> str:
        name = self.typed(root, (), "timezone", str, "UTC")
        try:
            zone(name)
        except ScheduleError as exc:
            import zoneinfo

            close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
            self.error(("timezone",), str(exc), f"did you mean {close[0]!r}?" if close else "")
            return "UTC"
        return name

    def build_beat(self, raw: dict) -> BeatSettings:
        self.unknown_keys(raw, ("beat",), BEAT_KEYS, "'beat'")
        group = self.typed(raw, ("beat",), "group", str, BeatSettings().group)
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", group):
            self.error(("beat", "group"), f"beat group {group!r} must be 1-200 letters, digits or '_.:-'",
                       "it names the beat's queues: amqtask.beat.<group>")
            group = BeatSettings().group
        return BeatSettings(group=group)

    def build_schedules(self, raw: dict, timezone: str, topology: Topology, defaults: Defaults,
                        routes: list[RouteRule], results: ResultSettings) -> tuple[ScheduleEntry, ...]:
        entries = []
        for name, spec in raw.items():
            path = ("schedules", name)
            spec = self.mapping(spec, path, f"schedule {name!r}")
            self.unknown_keys(spec, path, SCHEDULE_KEYS, f"schedule {name!r}")
            task = self.typed(spec, path, "task", str)
            if not task:
                self.error(path, f"schedule {name!r} needs 'task' (the task name to send)")
            schedule = self.schedule_timing(spec, path, timezone)
            options = self.schedule_options(self.mapping(spec.get("options"), path + ("options",), "'options'"),
                                            path + ("options",))
            self.check_schedule_results(name, options, path + ("options", "ignore_result"), results)
            args = self.sequence(spec.get("args"), path + ("args",), "'args'")
            kwargs = self.mapping(spec.get("kwargs"), path + ("kwargs",), "'kwargs'")
            missed = self.typed(spec, path, "missed", str, "run_once", choices=MISSED_POLICIES)
            jitter = self.schedule_duration(spec, path, "jitter")
            if not task:
                continue
            self.check_schedule_task(task, path)
            self.check_schedule_route(name, task, options, path, topology, defaults, routes)
            if schedule is not None:
                entries.append(ScheduleEntry(name=name, task=task, schedule=schedule, args=tuple(args),
                                             kwargs=kwargs, options=options, missed=missed, jitter=jitter,
                                             line=self.doc.position(path).line))
        return tuple(entries)

    def schedule_timing(self, spec: Mapping, path: tuple, timezone: str) -> Schedule | None:
        given = [k for k in ("every", "crontab", "at") if spec.get(k) is not None]
        if len(given) != 1:
            which = "none" if not given else " and ".join(repr(k) for k in given)
            self.error(path, f"a schedule needs exactly one of 'every', 'crontab' or 'at', not {which}",
                       "every: 10s | crontab: \"0 */3 * * *\" | at: 2026-12-24T18:00")
            return None
        key = given[0]
        value = spec[key]
        try:
            if key == "every":
                if not isinstance(value, str):
                    raise ScheduleError(f"'every' needs a unit, as in '{value}s' or '{value}m', not {value!r}")
                return every(value)
            if key == "crontab":
                if isinstance(value, dict):
                    return crontab(**{k: v for k, v in value.items()})
                if not isinstance(value, str):
                    raise ScheduleError(f"'crontab' must be a string of 5 fields, not {_kind(value)}")
                return parse_crontab(value)
            if not isinstance(value, (str, dt.datetime, dt.date)):
                raise ScheduleError(f"'at' must be a date and time like 2026-12-24T18:00, not {_kind(value)}")
            return at(value, timezone)
        except TypeError as exc:  # crontab(**mapping) with an unknown field
            self.error(path + (key,), f"invalid crontab mapping: {exc}".replace("crontab() ", ""),
                       "fields: minute, hour, day_of_week, day_of_month, month_of_year")
        except ScheduleError as exc:
            self.error(path + (key,), str(exc))
        return None

    def schedule_duration(self, spec: Mapping, path: tuple, key: str) -> float:
        value = spec.get(key)
        if value is None:
            return 0.0
        try:
            return parse_duration(value, what=repr(key))
        except ScheduleError as exc:
            self.error(path + (key,), str(exc))
            return 0.0

    def schedule_options(self, raw: Mapping, path: tuple) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                options[key] = schedule_option(key, value)
            except ScheduleError as exc:
                # An option refused on purpose says why; only an unknown one may be a typo.
                unknown = key not in SCHEDULE_OPTION_NAMES and key not in REFUSED_OPTIONS
                close = difflib.get_close_matches(key, SCHEDULE_OPTION_NAMES, n=1) if unknown else []
                self.error(path + (key,), str(exc), f"did you mean {close[0]!r}?" if close else "")
        for key, choices in (("serializer", SERIALIZERS), ("compression", COMPRESSIONS)):
            if key in options and options[key] not in choices:
                self.error(path + (key,), f"{key!r} must be one of {', '.join(choices)}, not {options[key]!r}")
                del options[key]
        return options

    def check_schedule_results(self, name: str, options: Mapping[str, Any], path: tuple,
                               results: ResultSettings) -> None:
        """The rule `amqtask beat` refuses to start by, as a warning: the app
        (App(result_backend=...)) or --result-backend may still name a backend."""
        reason = unread_results_reason(options, results.url)
        if reason is not None:
            self.warn(path, f"schedule {name!r}: {reason}",
                      "amqtask beat refuses to start with it unless the app or --result-backend names such a "
                      "backend; set results.backend, or drop 'ignore_result: false'")

    def check_schedule_task(self, task: str, path: tuple) -> None:
        if self.tasks is None or task in self.tasks:
            return
        close = difflib.get_close_matches(task, list(self.tasks), n=1)
        if close:
            self.error(path + ("task",), f"task {task!r} is not registered by the app",
                       f"did you mean {close[0]!r}?")
        else:
            self.warn(path + ("task",), f"task {task!r} is not registered by the app",
                      "fine if another service's worker runs it; otherwise register it with @app.task")

    def check_schedule_route(self, name: str, task: str, options: Mapping[str, Any], path: tuple,
                             topology: Topology, defaults: Defaults, routes: list[RouteRule]) -> None:
        from ..router import destination_for_rule

        where = path + ("options",) if options else path
        exchange, routing_key, queue = options.get("exchange"), options.get("routing_key"), options.get("queue")
        if queue is not None and exchange is None and routing_key is None:
            if queue not in topology.queues:
                self.error(where + ("queue",), f"schedule {name!r} names undefined queue {queue!r}",
                           _did_you_mean(queue, topology.queues) or "declare it under 'queues:'")
            return
        rule = next((r for r in routes if r.matches(task)), None)
        dest = destination_for_rule(rule, defaults) if rule else None
        exchange = exchange if exchange is not None else (dest.exchange if dest else defaults.exchange)
        routing_key = routing_key if routing_key is not None else (dest.routing_key if dest else defaults.routing_key)
        if exchange and exchange not in topology.exchanges:
            self.error(where, f"schedule {name!r} sends to undefined exchange {exchange!r}",
                       _did_you_mean(exchange, topology.exchanges) or "declare it under 'exchanges:'")
            return
        if topology.queues and not topology.route(exchange, routing_key, dest.headers if dest else {}):
            self.error(where, f"schedule {name!r} reaches no queue: task {task!r} goes to exchange "
                              f"{exchange or '(default exchange)'!r} with routing key {routing_key!r}, "
                              f"which matches no binding",
                       "every run would be refused; fix the route, or set options.queue / options.routing_key")

    def build_results(self, raw: dict) -> ResultSettings:
        path = ("results",)
        self.unknown_keys(raw, path, RESULTS_KEYS, "'results'")
        base = ResultSettings()
        expires = base.expires_ms
        if raw.get("expires") is not None:
            parsed = parse_duration_ms(raw["expires"])
            if parsed is None or parsed < 1:
                self.error(path + ("expires",), f"'expires' must be milliseconds or a duration like '1d', "
                                                f"not {raw['expires']!r}")
            else:
                expires = parsed
        backend = self.typed(raw, path, "backend", str)
        if backend is not None and result_backend_problem(backend):
            self.error(path + ("backend",), result_backend_problem(backend),
                       "rpc://, redis://HOST:6379/0, rediss://..., sentinel://HOST:26379?master_name=NAME "
                       "or db+postgresql://USER@HOST/DB")
            backend = None
        tables = self.mapping(raw.get("table_names"), path + ("table_names",), "'results.table_names'")
        self.unknown_keys(tables, path + ("table_names",), ("task", "group"), "'results.table_names'")
        for key, name in tables.items():
            if not isinstance(name, str) or not _TABLE_NAME.match(name):
                self.error(path + ("table_names", key), f"table name {name!r} must be letters, digits and "
                                                         "underscores (at most 48), starting with a letter")
        max_pending = self.typed(raw, path, "rpc_max_pending", int, base.rpc_max_pending)
        if max_pending < 1:
            self.error(path + ("rpc_max_pending",), "'rpc_max_pending' must be at least 1")
            max_pending = base.rpc_max_pending
        return ResultSettings(
            backend=backend,
            enabled=self.typed(raw, path, "enabled", bool, base.enabled),
            expires_ms=expires,
            serializer=self.typed(raw, path, "serializer", str, base.serializer, choices=SERIALIZERS),
            extended=self.typed(raw, path, "extended", bool, base.extended),
            table_names={k: v for k, v in tables.items() if isinstance(v, str) and _TABLE_NAME.match(v)},
            rpc_max_pending=max_pending,
        )

    def build_broker(self, raw: dict) -> BrokerSettings:
        path = ("broker",)
        self.unknown_keys(raw, path, BROKER_KEYS, "'broker'")
        url_text = self.typed(raw, path, "url", str) or os.environ.get(BROKER_ENV) or DEFAULT_BROKER_URL
        try:
            urls = parse_broker_urls(url_text)
        except BrokerURLError as exc:
            self.error(path + ("url",), str(exc), "for example amqp://guest:guest@127.0.0.1:5672//")
            urls = BrokerSettings().urls
        accept = self.sequence(raw.get("accept_content"), path + ("accept_content",), "'accept_content'")
        for i, name in enumerate(accept):
            if name not in SERIALIZERS:
                self.error(path + ("accept_content", i), f"unknown serializer {name!r}", f"one of {SERIALIZERS}")
        tls_raw = self.mapping(raw.get("tls"), path + ("tls",), "'tls'")
        self.unknown_keys(tls_raw, path + ("tls",), TLS_KEYS, "'broker.tls'")
        tls = TLSSettings(**{k: self.typed(tls_raw, path + ("tls",), k, bool if k == "verify" else str,
                                           True if k == "verify" else None) for k in TLS_KEYS})
        base = BrokerSettings()
        return BrokerSettings(
            urls=urls,
            confirm_publish=self.typed(raw, path, "confirm_publish", bool, base.confirm_publish),
            connect_timeout=self.positive(raw, path, "connect_timeout", float, base.connect_timeout),
            publish_timeout=self.positive(raw, path, "publish_timeout", float, base.publish_timeout),
            heartbeat=self.typed(raw, path, "heartbeat", int, base.heartbeat),
            publish_retries=self.typed(raw, path, "publish_retries", int, base.publish_retries),
            accept_content=tuple(a for a in accept if a in SERIALIZERS) or base.accept_content,
            tls=tls,
            max_message_bytes=self.positive(raw, path, "max_message_bytes", int, base.max_message_bytes),
        )

    def processes(self, raw: Mapping, path: tuple, default: int | str) -> int | str:
        """worker.processes: a whole number above 0, or "auto" (one per CPU)."""
        if raw.get("processes") == "auto":
            return "auto"
        value = raw.get("processes")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            self.error(path + ("processes",), f"'processes' must be a whole number or 'auto', not {value!r}")
            return default
        return self.positive(raw, path, "processes", int, None) or default

    def positive(self, raw: Mapping, path: tuple, key: str, kind: type, default: Any) -> Any:
        value = self.typed(raw, path, key, kind, default)
        if value is not None and value is not default and value <= 0:
            self.error(path + (key,), f"{key!r} must be greater than 0, not {value!r}")
            return default
        return value

    def build_exchanges(self, raw: dict) -> tuple[dict[str, Exchange], list[Binding]]:
        exchanges: dict[str, Exchange] = {}
        bindings: list[Binding] = []
        for name, spec in raw.items():
            path = ("exchanges", name)
            self.check_name(path, name, "exchange")
            spec = self.mapping(spec, path, f"exchange {name!r}")
            self.unknown_keys(spec, path, EXCHANGE_KEYS, f"exchange {name!r}")
            arguments = self.mapping(spec.get("arguments"), path + ("arguments",), "'arguments'")
            exchanges[name] = Exchange(
                name=name,
                type=self.typed(spec, path, "type", str, "direct", choices=EXCHANGE_TYPES),
                durable=self.typed(spec, path, "durable", bool, True),
                auto_delete=self.typed(spec, path, "auto_delete", bool, False),
                internal=self.typed(spec, path, "internal", bool, False),
                alternate_exchange=self.typed(spec, path, "alternate_exchange", str),
                arguments=arguments,
            )
            for b_path, source, key, args in self.bindings(spec, path):
                bindings.append(Binding(source, name, key, args, to_exchange=True))
                self._binding_paths[(source, name, key, True)] = b_path
        return exchanges, bindings

    def bindings(self, spec: Mapping, path: tuple):
        """Yield (path, source exchange, routing key, arguments) for each binding;
        `routing_key` may be a list, giving one binding per key."""
        for i, item in enumerate(self.sequence(spec.get("bindings"), path + ("bindings",), "'bindings'")):
            b_path = path + ("bindings", i)
            item = self.mapping(item, b_path, "a binding")
            self.unknown_keys(item, b_path, BINDING_KEYS, "a binding")
            source = self.typed(item, b_path, "exchange", str)
            if source is None:
                self.error(b_path, "a binding needs 'exchange'", "name the exchange this binding listens to")
                continue
            keys = item.get("routing_key", "")
            keys = keys if isinstance(keys, list) else [keys]
            args = self.mapping(item.get("arguments"), b_path + ("arguments",), "'arguments'")
            for key in keys:
                if not isinstance(key, str):
                    self.error(b_path + ("routing_key",), f"'routing_key' must be a string, not {_kind(key)}",
                               "quote keys such as '*' or '#.x'")
                    continue
                yield b_path, source, key, args

    def build_queues(self, raw: dict) -> tuple[dict[str, Queue], list[Binding]]:
        queues: dict[str, Queue] = {}
        bindings: list[Binding] = []
        for name, spec in raw.items():
            path = ("queues", name)
            self.check_name(path, name, "queue")
            spec = self.mapping(spec, path, f"queue {name!r}")
            self.unknown_keys(spec, path, QUEUE_KEYS, f"queue {name!r}")
            arguments = dict(self.mapping(spec.get("arguments"), path + ("arguments",), "'arguments'"))
            for key, x_arg in QUEUE_ARGUMENTS.items():
                value = self.queue_argument(spec, path, key)
                if value is None:
                    continue
                if x_arg in arguments:
                    self.error(path + (key,), f"{key!r} and arguments[{x_arg!r}] both set", "keep one")
                arguments[x_arg] = value
            queues[name] = Queue(
                name=name,
                durable=self.typed(spec, path, "durable", bool, True),
                exclusive=self.typed(spec, path, "exclusive", bool, False),
                auto_delete=self.typed(spec, path, "auto_delete", bool, False),
                arguments=arguments,
            )
            self.check_queue(queues[name], path, spec)
            for b_path, source, key, args in self.bindings(spec, path):
                bindings.append(Binding(source, name, key, args))
                self._binding_paths[(source, name, key, False)] = b_path
        return queues, bindings

    def queue_argument(self, spec: Mapping, path: tuple, key: str) -> Any:
        if key in ("message_ttl", "expires"):
            if spec.get(key) is None:
                return None
            ms = parse_duration_ms(spec[key])
            if ms is None or ms < (1 if key == "expires" else 0):
                self.error(path + (key,), f"{key!r} must be milliseconds or a duration like '30s', not {spec[key]!r}")
            return ms
        if key in ("max_priority", "max_length", "max_length_bytes"):
            value = self.typed(spec, path, key, int)
            if key == "max_priority" and value is not None and not 1 <= value <= 255:
                self.error(path + (key,), f"'max_priority' must be between 1 and 255, not {value}",
                           "RabbitMQ recommends at most 10 priority levels")
            elif value is not None and value < 0:
                self.error(path + (key,), f"{key!r} must not be negative")
            return value
        if key == "overflow":
            return self.typed(spec, path, key, str, choices=OVERFLOWS)
        if key == "queue_type":
            return self.typed(spec, path, key, str, choices=QUEUE_TYPES)
        if key == "single_active_consumer":
            return self.typed(spec, path, key, bool) or None
        return self.typed(spec, path, key, str)

    def check_name(self, path: tuple, name: str, kind: str) -> None:
        if not name:
            self.error(path, f"an {kind} name must not be empty")
        elif name.startswith("amq."):
            self.error(path, f"{kind} name {name!r} uses the reserved prefix 'amq.'", "RabbitMQ refuses to declare it")
        elif len(name.encode()) > MAX_NAME_BYTES:
            self.error(path, f"{kind} name is longer than {MAX_NAME_BYTES} bytes")

    def check_queue(self, queue: Queue, path: tuple, spec: Mapping) -> None:
        """Argument combinations RabbitMQ refuses with PRECONDITION_FAILED."""
        args = queue.arguments
        qtype = queue.queue_type
        where = path + ("queue_type",) if "queue_type" in spec else path

        def refuse(condition: bool, what: str) -> None:
            if condition:
                self.error(where, f"a {qtype} queue cannot be {what}", "RabbitMQ refuses this declaration")

        if qtype in ("quorum", "stream"):
            refuse(queue.exclusive, "exclusive")
            refuse(queue.auto_delete, "auto-delete")
            refuse(not queue.durable, "non-durable")
            refuse("x-max-priority" in args, "a priority queue (max_priority)")
        if qtype == "quorum":
            refuse(args.get("x-overflow") == "reject-publish-dlx", "set to overflow 'reject-publish-dlx'")
        if qtype == "stream":
            refuse("x-dead-letter-exchange" in args, "dead-lettered (streams keep every message)")
            refuse("x-message-ttl" in args, "given a message_ttl (use arguments x-max-age)")
            refuse("x-overflow" in args, "given an overflow behaviour")
            refuse("x-max-length" in args, "limited by max_length (use max_length_bytes)")
        if "x-dead-letter-routing-key" in args and "x-dead-letter-exchange" not in args:
            self.error(path + ("dead_letter_routing_key",),
                       "'dead_letter_routing_key' needs 'dead_letter_exchange'",
                       "RabbitMQ refuses one without the other; use '' for the default exchange")

    def check_topology(self, topology: Topology) -> None:
        known = set(topology.exchanges) | {DEFAULT_EXCHANGE}
        for b in topology.bindings:
            path = self._binding_paths.get((b.source, b.destination, b.routing_key, b.to_exchange), ())
            if b.source == DEFAULT_EXCHANGE:
                self.error(path + ("exchange",), "nothing can bind to the default exchange ''",
                           "every queue is already reachable through it by its own name")
            elif b.source not in known:
                self.error(path + ("exchange",), f"binding names undefined exchange {b.source!r}",
                           _did_you_mean(b.source, topology.exchanges) or "declare it under 'exchanges:'")
            else:
                self.check_binding(topology.exchanges[b.source], b, path)
        for x in topology.exchanges.values():
            if x.alternate_exchange is not None and x.alternate_exchange not in topology.exchanges:
                self.error(("exchanges", x.name, "alternate_exchange"),
                           f"alternate exchange {x.alternate_exchange!r} is not defined",
                           _did_you_mean(x.alternate_exchange, topology.exchanges) or "declare it under 'exchanges:'")
        for q in topology.queues.values():
            dlx = q.dead_letter_exchange
            if dlx and dlx not in topology.exchanges:
                self.error(("queues", q.name, "dead_letter_exchange"), f"dead-letter exchange {dlx!r} is not defined",
                           "dead letters sent there would be dropped; declare it under 'exchanges:'")
            unparkable = unparkable_reason(q.name)
            if unparkable is not None:
                self.warn(("queues", q.name), unparkable,
                          "a worker dead-letters every countdown, eta, retry and rate-limited task of this queue")

    def check_binding(self, exchange: Exchange, binding: Binding, path: tuple) -> None:
        key = binding.routing_key
        if len(key.encode()) > MAX_NAME_BYTES:
            self.error(path + ("routing_key",), f"routing key longer than {MAX_NAME_BYTES} bytes")
        if exchange.type == "topic":
            for word in key.split("."):
                if word not in ("#", "*") and ("#" in word or "*" in word):
                    self.error(path + ("routing_key",),
                               f"invalid topic pattern {key!r}: {word!r} mixes a wildcard with other characters",
                               "'*' and '#' only work as whole words between dots, as in 'web.*' or 'web.#'")
                    break
        elif exchange.type == "direct" and any(c in key for c in "*#"):
            self.warn(path + ("routing_key",), f"direct exchange {exchange.name!r} matches {key!r} literally",
                      "wildcards only work on topic exchanges")
        elif exchange.type == "headers":
            mode = binding.arguments.get("x-match", "all")
            if mode not in X_MATCH:
                self.error(path + ("arguments",), f"'x-match' must be one of {', '.join(X_MATCH)}, not {mode!r}")

    def build_defaults(self, raw: dict, topology: Topology) -> Defaults:
        path = ("defaults",)
        self.unknown_keys(raw, path, DEFAULTS_KEYS, "'defaults'")
        queue = self.typed(raw, path, "queue", str)
        exchange = self.typed(raw, path, "exchange", str, DEFAULT_EXCHANGE)
        fallback_key = (queue or "default") if exchange == DEFAULT_EXCHANGE else None
        routing_key = self.typed(raw, path, "routing_key", str, fallback_key)
        if queue is not None and queue not in topology.queues:
            self.error(path + ("queue",), f"default queue {queue!r} is not defined",
                       _did_you_mean(queue, topology.queues) or "declare it under 'queues:'")
        if exchange and exchange not in topology.exchanges:
            self.error(path + ("exchange",), f"default exchange {exchange!r} is not defined",
                       _did_you_mean(exchange, topology.exchanges) or "declare it under 'exchanges:'")
        return Defaults(
            exchange=exchange,
            routing_key=routing_key if routing_key is not None else "",
            queue=queue,
            serializer=self.typed(raw, path, "serializer", str, "json", choices=SERIALIZERS),
            compression=self.typed(raw, path, "compression", str, choices=COMPRESSIONS),
            persistent=self.typed(raw, path, "persistent", bool, True),
        )

    def build_routes(self, raw: list, topology: Topology, defaults: Defaults) -> list[RouteRule]:
        rules = []
        for i, item in enumerate(raw):
            path = ("routes", i)
            item = self.mapping(item, path, "a route")
            self.unknown_keys(item, path, ROUTE_KEYS, "a route")
            pattern = self.typed(item, path, "task", str)
            if pattern is None:
                self.error(path, "a route needs 'task' (a name, a glob like 'proj.web.*', or 're:<regex>')")
                continue
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    self.error(path + ("task",), f"invalid regular expression {pattern[3:]!r}: {exc}")
                    continue
            rule = RouteRule(
                pattern=pattern,
                exchange=self.typed(item, path, "exchange", str),
                routing_key=self.typed(item, path, "routing_key", str),
                queue=self.typed(item, path, "queue", str),
                priority=self.priority(item, path),
                headers=self.mapping(item.get("headers"), path + ("headers",), "'headers'"),
                options=self.task_options(self.mapping(item.get("options"), path + ("options",), "'options'"),
                                          path + ("options",)),
                line=self.doc.position(path).line,
            )
            self.check_route(rule, path, topology, defaults)
            rules.append(rule)
        return rules

    def priority(self, raw: Mapping, path: tuple) -> int | None:
        value = self.typed(raw, path, "priority", int)
        if value is not None and not 0 <= value <= 255:
            self.error(path + ("priority",), f"'priority' must be between 0 and 255, not {value}")
            return None
        return value

    def check_route(self, rule: RouteRule, path: tuple, topology: Topology, defaults: Defaults) -> None:
        # Imported here: router depends on settings, and the loader only needs its resolution rule.
        from ..router import destination_for_rule

        if rule.queue is not None and rule.queue not in topology.queues:
            self.error(path + ("queue",), f"route names undefined queue {rule.queue!r}",
                       _did_you_mean(rule.queue, topology.queues) or "declare it under 'queues:'")
            return
        if rule.exchange and rule.exchange not in topology.exchanges:
            self.error(path + ("exchange",), f"route names undefined exchange {rule.exchange!r}",
                       _did_you_mean(rule.exchange, topology.exchanges) or "declare it under 'exchanges:'")
            return
        if rule.routing_key and any(w in ("*", "#") for w in rule.routing_key.split(".")):
            self.error(path + ("routing_key",), f"route routing key {rule.routing_key!r} contains a wildcard",
                       "a published routing key is literal; wildcards belong in bindings")
            return
        dest = destination_for_rule(rule, defaults)
        if dest.exchange and dest.exchange in topology.exchanges and topology.exchanges[dest.exchange].internal:
            self.error(path, f"route publishes to internal exchange {dest.exchange!r}",
                       "RabbitMQ refuses publishes to internal exchanges")
            return
        if dest.exchange and dest.exchange not in topology.exchanges:
            return  # the undefined default exchange is reported once, under 'defaults'
        reached = topology.route(dest.exchange, dest.routing_key, dest.headers)
        if not reached:
            shown = dest.exchange or "(default exchange)"
            self.error(path, f"route for {rule.pattern!r} reaches no queue: exchange {shown!r} "
                             f"with routing key {dest.routing_key!r} matches no binding",
                       "every task published through it would be lost; fix the routing key or add a binding")
        elif rule.queue is not None and rule.queue not in reached:
            self.error(path, f"route names queue {rule.queue!r} but its exchange and routing key reach "
                             f"{', '.join(sorted(reached))}")

    def task_options(self, raw: Mapping, path: tuple) -> TaskOptions:
        self.unknown_keys(raw, path, TASK_OPTION_NAMES, "task options")
        rate = self.typed(raw, path, "rate_limit", (str, int, float))
        if rate is not None and not RATE_LIMIT.match(str(rate)):
            self.error(path + ("rate_limit",), f"invalid rate_limit {rate!r}", "write '100/s', '500/m' or '10/h'")
            rate = None
        return TaskOptions(
            serializer=self.typed(raw, path, "serializer", str, choices=SERIALIZERS),
            compression=self.typed(raw, path, "compression", str, choices=COMPRESSIONS),
            priority=self.priority(raw, path),
            rate_limit=None if rate is None else str(rate),
            time_limit=self.positive(raw, path, "time_limit", float, None),
            soft_time_limit=self.positive(raw, path, "soft_time_limit", float, None),
            max_retries=self.typed(raw, path, "max_retries", int),
            default_retry_delay=self.typed(raw, path, "default_retry_delay", float),
            acks_late=self.typed(raw, path, "acks_late", bool),
            reject_on_worker_lost=self.typed(raw, path, "reject_on_worker_lost", bool),
            ignore_result=self.typed(raw, path, "ignore_result", bool),
            expires=self.positive(raw, path, "expires", float, None),
        )

    def build_tasks(self, raw: dict) -> dict[str, TaskOptions]:
        return {
            name: self.task_options(self.mapping(spec, ("tasks", name), f"task {name!r}"), ("tasks", name))
            for name, spec in raw.items()
        }

    def build_worker(self, raw: dict, topology: Topology) -> WorkerSettings:
        path = ("worker",)
        self.unknown_keys(raw, path, WORKER_KEYS, "'worker'")
        base = WorkerSettings()
        queue_lists = {}
        for key in ("queues", "exclude_queues"):
            names = self.sequence(raw.get(key), path + (key,), f"{key!r}")
            for i, name in enumerate(names):
                if not isinstance(name, str):
                    self.error(path + (key, i), f"worker {key} entries must be queue names, not {_kind(name)}")
                elif name not in topology.queues:
                    self.error(path + (key, i), f"worker {key} names undefined queue {name!r}",
                               _did_you_mean(name, topology.queues) or "declare it under 'queues:'")
            queue_lists[key] = tuple(n for n in names if isinstance(n, str))
        loglevel = raw.get("loglevel")
        if isinstance(loglevel, str):
            raw = {**raw, "loglevel": loglevel.upper()}
        return WorkerSettings(
            concurrency=self.positive(raw, path, "concurrency", int, None),
            processes=self.processes(raw, path, base.processes),
            pool=self.typed(raw, path, "pool", str, base.pool, choices=POOLS),
            prefetch_multiplier=self.typed(raw, path, "prefetch_multiplier", int, base.prefetch_multiplier),
            optimization=self.typed(raw, path, "optimization", str, base.optimization, choices=("fair", "fast")),
            queues=queue_lists["queues"],
            exclude_queues=queue_lists["exclude_queues"],
            max_tasks_per_child=self.positive(raw, path, "max_tasks_per_child", int, None),
            max_memory_per_child=self.positive(raw, path, "max_memory_per_child", int, None),
            time_limit=self.positive(raw, path, "time_limit", float, None),
            soft_time_limit=self.positive(raw, path, "soft_time_limit", float, None),
            loglevel=self.typed(raw, path, "loglevel", str, base.loglevel, choices=LOGLEVELS),
            name=self.typed(raw, path, "name", str),
            monitor=self.build_monitor(raw, path),
        )

    def build_monitor(self, raw: Mapping, path: tuple) -> MonitorSettings:
        """The worker's monitoring keys: events, heartbeat_interval, control,
        metrics_port, revoked_stream."""
        base = MonitorSettings()
        heartbeat = self.typed(raw, path, "heartbeat_interval", float, base.heartbeat_interval)
        if heartbeat < 0:
            self.error(path + ("heartbeat_interval",), f"'heartbeat_interval' must be 0 or more, not {heartbeat!r}")
            heartbeat = base.heartbeat_interval
        port = self.positive(raw, path, "metrics_port", int, None)
        if port is not None and port > 65535:
            self.error(path + ("metrics_port",), f"'metrics_port' must be a TCP port (1-65535), not {port!r}")
            port = None
        stream = raw.get("revoked_stream", base.revoked_stream)
        if stream is not None:
            stream = self.typed(raw, path, "revoked_stream", str, base.revoked_stream)
            if not stream:
                self.error(path + ("revoked_stream",), "'revoked_stream' must be a queue name, or null")
        control = raw.get("control")
        if control is False:  # YAML 1.1 reads a bare `off` as false
            raw = {**raw, "control": "off"}
        return MonitorSettings(
            events=self.typed(raw, path, "events", bool, base.events),
            heartbeat_interval=float(heartbeat),
            control=self.typed(raw, path, "control", str, base.control, choices=CONTROL_MODES),
            metrics_port=port,
            revoked_stream=stream,
        )

    def check_cluster(self, topology: Topology, broker: BrokerSettings) -> None:
        """With several broker URLs (a cluster), a classic queue lives on one node: its
        messages, and the countdowns, etas and retries waiting for it in the classic
        delay queues, are gone while that node is, or for good if its disk is."""
        if len(broker.urls) < 2:
            return
        for name, queue in topology.queues.items():
            if queue.queue_type == "classic" and queue.durable and not (queue.exclusive or queue.auto_delete):
                self.warn(("queues", name), f"classic queue {name!r} lives on one node of the cluster, and so do "
                          "the countdowns, etas and retries waiting for it",
                          "declare it 'queue_type: quorum': it and its delay queues are then replicated")

    def check_reachability(self, topology: Topology, defaults: Defaults, routes: list[RouteRule]) -> None:
        if defaults.exchange == DEFAULT_EXCHANGE or defaults.exchange in topology.exchanges:
            reached = topology.route(defaults.exchange, defaults.routing_key)
            if topology.queues and not reached:
                # Without a 'defaults' section this is only a risk; with one, a mistake.
                report = self.error if "defaults" in (self.doc.data or {}) else self.warn
                report(("defaults",), f"the default destination (exchange {defaults.exchange or '(default)'!r}, "
                                          f"routing key {defaults.routing_key!r}) reaches no queue",
                           "tasks that match no route would be lost; set defaults.routing_key to a bound key")
            elif defaults.queue and defaults.queue not in reached:
                self.warn(("defaults", "queue"), f"default queue {defaults.queue!r} is not where the default "
                                                 f"exchange and routing key deliver ({', '.join(sorted(reached))})")
        targeted = {r.queue for r in routes if r.queue} | {defaults.queue}
        bound = topology.reachable_queues()
        dead_letter_targets = {q.arguments.get("x-dead-letter-routing-key") for q in topology.queues.values()
                               if q.dead_letter_exchange == DEFAULT_EXCHANGE}
        for name in topology.queues:
            if name not in bound and name not in targeted and name not in dead_letter_targets:
                self.warn(("queues", name), f"queue {name!r} has no bindings and no route names it",
                          "only a publish to the default exchange with routing key "
                          f"{name!r} can reach it; add a binding")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping",
               list: "a list"}


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    for kind, name in ((bool, "true/false"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (dict, "a mapping"), (list, "a list")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _did_you_mean(name: str, candidates: Mapping[str, Any] | Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def format_problems(problems: list[Problem] | tuple[Problem, ...]) -> str:
    return "\n".join(str(p) for p in problems)


__all__ = [
    "Problem", "LoadResult", "check_file", "check_text", "load_settings", "resolve_config_path",
    "format_problems", "parse_duration_ms", "DEFAULT_CONFIG",
]
