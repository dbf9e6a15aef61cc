"""`app.conf`: the App's settings under Celery's names, read-only.

    app.conf.broker_url, app.conf["task_default_queue"], app.conf.CELERYD_CONCURRENCY

Only settings with an amqtask equivalent are there. Settings come from routing.yaml
(or `app.config_from_object(...)`); assigning to app.conf is refused with a message
saying so, because a change there would not reach the routing or the workers."""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Iterator, Mapping
from urllib.parse import quote

from .errors import AmqtaskError

if TYPE_CHECKING:
    from .app import App
    from .brokerurl import BrokerURL

# Celery's old upper-case names of the settings below (Celery's own compat table says
# the same; a test holds them to it).
OLD_NAMES = {
    "BROKER_URL": "broker_url", "BROKER_HEARTBEAT": "broker_heartbeat",
    "BROKER_CONNECTION_TIMEOUT": "broker_connection_timeout", "BROKER_USE_SSL": "broker_use_ssl",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options", "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_TASK_SERIALIZER": "task_serializer", "CELERY_MESSAGE_COMPRESSION": "task_compression",
    "CELERY_DEFAULT_QUEUE": "task_default_queue", "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode", "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_ALWAYS_EAGER": "task_always_eager", "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit", "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERY_RESULT_BACKEND": "result_backend", "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires", "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier", "CELERYD_POOL": "worker_pool",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child", "CELERY_IMPORTS": "imports",
    "CELERY_TIMEZONE": "timezone",
}


class ReadOnlyConf(AmqtaskError, TypeError):
    """app.conf cannot be changed: settings come from routing.yaml."""


def broker_url_text(url: "BrokerURL") -> str:
    """The URL with its password, as Celery's conf.broker_url holds it."""
    scheme = "amqps" if url.tls else "amqp"
    return (f"{scheme}://{quote(url.username, safe='')}:{quote(url.password, safe='')}@{url.host}:{url.port}/"
            f"{quote(url.vhost, safe='')}")


class Conf(Mapping[str, Any]):
    """A read-only mapping (and attribute) view of an App's settings by Celery's names."""

    __slots__ = ("_app",)

    def __init__(self, app: "App") -> None:
        object.__setattr__(self, "_app", app)

    def _values(self) -> dict[str, Any]:
        app = self._app
        s = app.settings
        d, w, r, b = s.defaults, s.worker, s.results, s.broker
        default_queue = d.queue if d.queue is not None else (d.routing_key if d.exchange == "" else None)
        exchange = s.topology.exchanges.get(d.exchange)
        values = {
            "broker_url": ";".join(broker_url_text(u) for u in b.urls),
            "broker_heartbeat": b.heartbeat,
            "broker_connection_timeout": b.connect_timeout,
            "broker_use_ssl": {k: v for k, v in vars(b.tls).items() if v is not None}
                              if any(u.tls for u in b.urls) else False,
            "broker_transport_options": {"confirm_publish": b.confirm_publish},
            "accept_content": list(b.accept_content),
            "task_serializer": d.serializer,
            "task_compression": d.compression,
            "task_default_queue": default_queue,
            "task_default_exchange": d.exchange,
            "task_default_exchange_type": exchange.type if exchange is not None else "direct",
            "task_default_routing_key": d.routing_key,
            "task_default_delivery_mode": "persistent" if d.persistent else "transient",
            "task_acks_late": True,  # amqtask's default; a task or routing.yaml may say otherwise
            "task_always_eager": app.task_always_eager,
            "task_eager_propagates": app.task_eager_propagates,
            "task_time_limit": w.time_limit,
            "task_soft_time_limit": w.soft_time_limit,
            "result_backend": "rpc://" if r.enabled else None,
            "result_serializer": r.serializer,
            "result_expires": r.expires_ms / 1000,
            "worker_concurrency": w.concurrency,
            "worker_prefetch_multiplier": w.prefetch_multiplier,
            "worker_pool": w.pool,
            "worker_max_tasks_per_child": w.max_tasks_per_child,
            "worker_max_memory_per_child": w.max_memory_per_child,
            "imports": tuple(app.imports),
        }
        if hasattr(s, "timezone"):  # routing.yaml's timezone, where the loader has it
            values["timezone"] = s.timezone
        return values

    def __getitem__(self, key: str) -> Any:
        values = self._values()
        name = OLD_NAMES.get(key, key)
        if name in values:
            return values[name]
        close = difflib.get_close_matches(name, list(values), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (only settings with an amqtask equivalent are here)"
        raise KeyError(f"{key!r} is not in app.conf{hint}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return f"<Conf of {self._app.name!r}: {len(self)} settings>"

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise ReadOnlyConf("app.conf is read-only in amqtask: settings come from routing.yaml; change it there, or "
                           "load a Celery configuration with app.config_from_object(...)")

    __setattr__ = __setitem__ = __delitem__ = __delattr__ = _refuse
    update = setdefault = pop = clear = _refuse
