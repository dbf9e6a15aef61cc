"""amqtask's records in the shapes Celery's replies have, so that Celery's CLI and
Flower read them as they read a Celery worker's (celery/worker/request.py `info`,
celery/worker/control.py, kombu's `Queue.as_dict(recurse=True)`,
celery/worker/worker.py `stats`)."""
from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Iterable

from ..events.build import bounded_repr
from ..settings import BrokerSettings
from ..topology.model import Exchange, Queue, Topology
from .view import PoolInfo, RequestInfo, TaskInfo

try:
    import resource
except ImportError:  # not on this platform
    resource = None  # type: ignore[assignment]

# What `registered` shows when the caller names nothing (Celery's DEFAULT_TASK_INFO_ITEMS).
DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")


def request_info(request: RequestInfo, *, hostname: str, safe: bool = False) -> dict[str, Any]:
    """Celery's `Request.info(safe)`: with safe=True, args and kwargs are the repr
    strings (Flower asks for this); otherwise the decoded values."""
    if safe:
        args: Any = request.argsrepr if request.argsrepr is not None else bounded_repr(tuple(request.args))
        kwargs: Any = request.kwargsrepr if request.kwargsrepr is not None else bounded_repr(dict(request.kwargs))
    else:
        args, kwargs = list(request.args), dict(request.kwargs)
    return {
        "id": request.id,
        "name": request.name,
        "args": args,
        "kwargs": kwargs,
        "type": request.name,
        "hostname": hostname,
        "time_start": request.time_start,
        "acknowledged": request.acknowledged,
        "delivery_info": {"exchange": request.exchange, "routing_key": request.routing_key,
                          "priority": request.priority, "redelivered": request.redelivered},
        "worker_pid": request.worker_pid,
    }


def scheduled_info(request: RequestInfo, *, hostname: str) -> dict[str, Any]:
    """An entry of `scheduled`: {eta, priority, request}."""
    eta = request.eta.isoformat() if isinstance(request.eta, dt.datetime) else request.eta
    return {"eta": eta, "priority": request.priority or 0, "request": request_info(request, hostname=hostname)}


def registered_line(task: TaskInfo, items: Iterable[str] = DEFAULT_TASK_INFO_ITEMS) -> str:
    """'name [exchange=x routing_key=k rate_limit=10/m]', showing only the items set."""
    shown = [f"{item}={getattr(task, item)}" for item in items
             if not item.startswith("_") and getattr(task, item, None) is not None]
    return f"{task.name} [{' '.join(shown)}]" if shown else task.name


def exchange_dict(exchange: Exchange | None) -> dict[str, Any]:
    """kombu's `Exchange.as_dict()`; None is the default exchange."""
    exchange = exchange or Exchange("", "direct")
    return {"name": exchange.name, "type": exchange.type, "arguments": dict(exchange.declare_arguments()) or None,
            "durable": exchange.durable, "passive": False, "auto_delete": exchange.auto_delete,
            "delivery_mode": None, "no_declare": False}


def queue_dict(topology: Topology, name: str) -> dict[str, Any]:
    """kombu's `Queue.as_dict(recurse=True)` for a consumed queue: its first binding
    gives `exchange` and `routing_key`, the others are listed in `bindings`. A queue
    routing.yaml does not declare is shown as a plain durable queue on the default
    exchange, which is how the worker declares it."""
    queue = topology.queues.get(name, Queue(name))
    bindings = topology.bindings_to_queue(name)
    first = bindings[0] if bindings else None
    arguments = dict(queue.arguments)
    return {
        "name": name,
        "exchange": exchange_dict(topology.exchanges.get(first.source) if first else None),
        "routing_key": first.routing_key if first else name,
        "queue_arguments": arguments or None,
        "binding_arguments": (dict(first.arguments) or None) if first else None,
        "consumer_arguments": None,
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        "no_ack": False,
        "alias": None,
        "bindings": [{"exchange": b.source, "routing_key": b.routing_key, "arguments": dict(b.arguments) or None}
                     for b in bindings[1:]],
        "no_declare": None,
        "expires": _seconds(arguments.get("x-expires")),
        "message_ttl": _seconds(arguments.get("x-message-ttl")),
        "max_length": arguments.get("x-max-length"),
        "max_length_bytes": arguments.get("x-max-length-bytes"),
        "max_priority": arguments.get("x-max-priority"),
    }


def _seconds(milliseconds: Any) -> float | None:
    return milliseconds / 1000 if isinstance(milliseconds, (int, float)) and not isinstance(milliseconds, bool) \
        else None


def broker_info(broker: BrokerSettings) -> dict[str, Any]:
    """Celery's `stats.broker` for the first broker URL; the others are listed
    (redacted) in `alternates`. Never a password."""
    url = broker.urls[0]
    return {
        "hostname": url.host, "userid": url.username, "virtual_host": url.vhost, "port": url.port,
        "insist": False, "ssl": url.tls, "transport": "amqp", "connect_timeout": broker.connect_timeout,
        "transport_options": {}, "login_method": "PLAIN", "uri_prefix": None, "heartbeat": float(broker.heartbeat),
        "failover_strategy": "round-robin", "alternates": [u.redacted() for u in broker.urls[1:]],
        "credential_provider": None,
    }


def pool_info(pool: PoolInfo) -> dict[str, Any]:
    """Celery's `stats.pool`."""
    return {
        "implementation": pool.implementation,
        "max-concurrency": pool.max_concurrency,
        "processes": list(pool.processes),
        "max-tasks-per-child": pool.max_tasks_per_child,
        "put-guarded-by-semaphore": False,
        "timeouts": [pool.soft_time_limit or 0, pool.time_limit or 0],
    }


def rusage() -> dict[str, Any] | str:
    """Celery's `stats.rusage` (this process), or 'N/A' where getrusage is missing."""
    if resource is None:
        return "N/A"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    names = ("utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap", "inblock",
             "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw")
    return {name: getattr(usage, f"ru_{name}") for name in names}


def json_safe(value: Any) -> Any:
    """`value` with whatever JSON cannot carry replaced by its repr (decoded msgpack
    or YAML arguments may hold bytes, dates, sets), and NaN/infinity as strings."""
    if _plain(value):
        return value
    try:
        return json.loads(json.dumps(value, default=bounded_repr, allow_nan=True), parse_constant=str)
    except (RecursionError, ValueError, TypeError):  # nested too deep, or keys JSON cannot have
        return bounded_repr(value)


def _plain(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False

