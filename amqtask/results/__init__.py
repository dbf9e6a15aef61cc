"""Task results: states, Celery's result document, AsyncResult, and the backends.

Results are off unless a backend is configured (as in Celery): `results.backend`
in routing.yaml or `App(result_backend=...)`:

- `rpc://`: back over RabbitMQ to the sender's reply queue (`results.rpc`);
- `redis://`, `rediss://`, `sentinel://`: Redis, as Celery stores them (`results.redis`, extra `redis`);
- `db+postgresql://`: PostgreSQL, in Celery's tables (`results.postgres`, extra `postgres`).

Each backend module is imported only when its URL is used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .asyncresult import AsyncResult, GroupResult, assert_will_not_block
from .base import ChordPart, ChordReady, PublishFn, ResultBackend, ResultStore
from .meta import (
    EXCEPTION_STATES,
    FAILURE,
    PENDING,
    PROPAGATE_STATES,
    READY_STATES,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    BackendUnavailable,
    ChordsUnsupported,
    ResultMeta,
    ResultsDisabled,
    TaskError,
    TaskRevokedError,
    TimeoutError,
    UnknownTaskError,
    exception_from_payload,
    exception_payload,
    result_body,
)

if TYPE_CHECKING:
    from ..settings import BrokerSettings, ResultSettings


def open_backend(settings: "ResultSettings", broker: "BrokerSettings") -> ResultBackend | None:
    """The backend `settings` name, or None when results are off. Nothing connects
    until first use. A missing optional library raises ResultsDisabled naming the extra."""
    url = settings.url
    if url is None:
        return None
    scheme = url.partition("://")[0].lower()
    if scheme == "rpc":
        from .rpc import RpcBackend

        return RpcBackend(broker, settings)
    if scheme in ("redis", "rediss", "sentinel"):
        try:
            from .redis import RedisBackend
        except ImportError:
            raise ResultsDisabled("the redis:// result backend needs redis-py: pip install 'amqtask[redis]'") from None
        return RedisBackend(url, expires_seconds=settings.expires_seconds, extended=settings.extended,
                            connect_timeout=broker.connect_timeout)
    if scheme.startswith("db+postgres"):
        try:
            from .postgres import PostgresBackend
        except ImportError:
            raise ResultsDisabled("the db+postgresql:// result backend needs psycopg 3: "
                                  "pip install 'amqtask[postgres]'") from None
        return PostgresBackend(url, expires_seconds=settings.expires_seconds, extended=settings.extended,
                               connect_timeout=broker.connect_timeout, table_names=settings.table_names)
    raise ResultsDisabled(f"unknown result backend {url.split('://')[0]}:// (use rpc://, redis://, "
                          "db+postgresql://)")


__all__ = [
    "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "READY_STATES", "EXCEPTION_STATES",
    "PROPAGATE_STATES", "result_body", "exception_payload", "exception_from_payload", "AsyncResult", "GroupResult", "assert_will_not_block",
    "TaskError", "TaskRevokedError", "TimeoutError", "UnknownTaskError", "ResultsDisabled", "BackendUnavailable",
    "ChordsUnsupported", "ResultMeta", "ResultBackend", "ResultStore", "ChordPart", "ChordReady", "PublishFn",
    "open_backend",
]
