"""Where Celery itself publishes a task: Celery's own send_task, with a producer that
records the publish instead of sending it (no broker, no transport state)."""
from __future__ import annotations

import contextlib
import importlib
import warnings
from types import SimpleNamespace
from typing import Any

from celery import Celery
from celery.app.defaults import _TO_NEW_KEY, SETTING_KEYS
from celery.exceptions import ImproperlyConfigured


class RecordingProducer:
    """What celery.app.base.send_task needs of a producer; keeps each publish's options."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.connection = self

    @contextlib.contextmanager
    def _reraise_as_library_errors(self):
        yield

    def publish(self, body: Any, **options: Any) -> None:
        self.published.append(options)


def celery_app(spec: str, namespace: str | None = None) -> Celery:
    """A Celery app configured the way the project configures its own, with an
    in-memory broker (routing does not depend on the broker; a Redis one would need
    the redis client just to look up its transport)."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(f"tests.celery_configs.{module_name}")
    found = getattr(module, attribute) if attribute else None
    apps = [v for v in vars(module).values() if isinstance(v, Celery)]
    if not isinstance(found, Celery) and apps and not any(k.isupper() or k in SETTING_KEYS for k in vars(module)):
        found = apps[0]
    source = module
    if isinstance(found, Celery):  # the project's app: the same settings, in an app of our own
        source = {k: v for k, v in found.conf.table(with_defaults=False, censored=False).items()
                  if k != "deprecated_settings"}
    app = Celery("oracle", set_as_current=False)
    app.config_from_object(source, namespace=namespace)
    try:
        app.conf.task_routes  # noqa: B018 - loading the configuration is the point
    except ImproperlyConfigured:
        # Celery refuses a mix of old and new names; rename the old ones as Celery asks.
        app = Celery("oracle", set_as_current=False)
        app.conf.update({_TO_NEW_KEY.get(k, k): v for k, v in vars(module).items()
                         if k in _TO_NEW_KEY or k in SETTING_KEYS})
    app.conf.broker_url = "memory://"
    return app


def celery_destination(app: Celery, name: str) -> tuple[str, str]:
    """(exchange, routing key) of Celery's publish of task `name` ('' = default exchange)."""
    producer = RecordingProducer()
    # result_cls: a result handle would instantiate the result backend (a Redis client, say).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # task_always_eager has no effect on send_task: as wanted here
        app.send_task(name, producer=producer, ignore_result=True,
                      result_cls=lambda task_id: SimpleNamespace(id=task_id))
    (options,) = producer.published
    exchange = options["exchange"]
    return str(getattr(exchange, "name", exchange) or ""), str(options["routing_key"] or "")


def task_names(spec: str) -> list[str]:
    module = importlib.import_module(f"tests.celery_configs.{spec.partition(':')[0]}")
    return list(module._TASK_NAMES)
