"""The application: settings from routing.yaml, the task registry and the publisher."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, overload

from .publisher import Publisher
from .result import AsyncResult
from .router import Router
from .settings import TASK_OPTION_NAMES, Settings, TaskOptions
from .task import Task, call_options
from .topology.loader import CONFIG_ENV, load_settings, resolve_config_path

F = TypeVar("F", bound=Callable[..., Any])


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

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.settings, self.router)
        return self._publisher

    @overload
    def task(self, fn: F) -> Task: ...
    @overload
    def task(self, fn: None = None, *, name: str | None = None, bind: bool = False,
             **options: Any) -> Callable[[F], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, bind: bool = False,
             **options: Any) -> Any:
        """Register a task: `@app.task` or `@app.task(name="proj.add", bind=True, max_retries=3)`."""
        unknown = sorted(set(options) - set(TASK_OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(unknown)}")

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            task = Task(self, func, name=task_name, bind=bind, options=TaskOptions(**options))
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def send_task(self, name: str, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> AsyncResult:
        """Publish a task by name, for tasks this process does not import."""
        sent = self.publisher.send(name, args or (), kwargs, call=call_options(options))
        return AsyncResult(sent.task_id, sent.task_name, sent.destination)

    async def send_task_async(self, name: str, args: tuple | list | None = None,
                              kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        sent = await self.publisher.send_async(name, args or (), kwargs, call=call_options(options))
        return AsyncResult(sent.task_id, sent.task_name, sent.destination)

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
