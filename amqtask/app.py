"""The application: settings from routing.yaml, the task registry and the publisher."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, overload

from .errors import AmqtaskError
from .publisher import Publisher, Sent
from .results import AsyncResult, ResultConsumer
from .router import Router
from .settings import TASK_OPTION_NAMES, Settings, TaskOptions
from .task import Task, call_options
from .topology.loader import CONFIG_ENV, load_settings, resolve_config_path

F = TypeVar("F", bound=Callable[..., Any])
# Decorator options that shape how the worker runs a task (not message options).
TASK_BEHAVIOUR = ("autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter", "track_started")


class App:
    """`App("proj", config="routing.yaml")`. Without `config`, $AMQTASK_CONFIG or
    ./routing.yaml is read when it exists; otherwise built-in defaults apply
    (the default exchange, a queue named after each routing key)."""

    def __init__(self, name: str = "amqtask", *, config: str | os.PathLike | None = None,
                 settings: Settings | None = None) -> None:
        self.name = name
        if settings is None:
            path = resolve_config_path(config)
            explicit = config is not None or CONFIG_ENV in os.environ
            settings = load_settings(path) if explicit or Path(path).exists() else Settings()
        self.settings = settings
        self.router = Router(settings)
        self.tasks: dict[str, Task] = {}
        self._publisher: Publisher | None = None

    def configure(self, settings: Settings) -> None:
        """Replace the settings (e.g. a worker's --config) before anything is sent."""
        self.close()
        self._publisher = None
        self.settings = settings
        self.router = Router(settings)

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            results = None
            if self.settings.results.enabled:
                results = ResultConsumer(self.settings.broker, self.settings.results,
                                         self.settings.broker.accept_content)
            self._publisher = Publisher(self.settings, self.router, results=results)
        return self._publisher

    def result_handle(self, sent: Sent) -> AsyncResult:
        return AsyncResult(sent.task_id, sent.task_name, sent.destination, self.publisher.results)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's spelling
        """A handle for a task id, e.g. one kept from an earlier delay() in this process."""
        return AsyncResult(task_id, backend=self.publisher.results)

    @overload
    def task(self, fn: F) -> Task: ...
    @overload
    def task(self, fn: None = None, *, name: str | None = None, bind: bool = False,
             **options: Any) -> Callable[[F], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, bind: bool = False,
             **options: Any) -> Any:
        """Register a task: `@app.task` or `@app.task(name="proj.add", bind=True, max_retries=3)`."""
        behaviour = {k: options.pop(k) for k in TASK_BEHAVIOUR if k in options}
        unknown = sorted(set(options) - set(TASK_OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(unknown)}")

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            task = Task(self, func, name=task_name, bind=bind, options=TaskOptions(**options), **behaviour)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def send_task(self, name: str, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> AsyncResult:
        """Publish a task by name, for tasks this process does not import."""
        sent = self.publisher.send(name, args or (), kwargs, call=call_options(options))
        return self.result_handle(sent)

    async def send_task_async(self, name: str, args: tuple | list | None = None,
                              kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        sent = await self.publisher.send_async(name, args or (), kwargs, call=call_options(options))
        return self.result_handle(sent)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()

    async def aclose(self) -> None:
        if self._publisher is not None:
            await self._publisher.aclose()

    def __enter__(self) -> "App":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_app(spec: str) -> App:
    """Find the App named by `-A`: "module", "module:attribute" or "package.module".
    A module's App is its `app` attribute, or the only App it defines. The current
    directory is importable, as for `python -m`."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AmqtaskError(f"cannot import {module_name!r} (from -A {spec}): {exc}") from None
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, App):
            raise AmqtaskError(f"{spec!r} is not an amqtask App")
        return found
    if isinstance(getattr(module, "app", None), App):
        return module.app  # type: ignore[no-any-return]
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if len(apps) != 1:
        raise AmqtaskError(f"module {module_name!r} defines {len(apps)} App objects; name one as {module_name}:NAME")
    return apps[0]
