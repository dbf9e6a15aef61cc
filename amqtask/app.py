"""The application: settings from routing.yaml, the task registry and the publisher."""
from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import sys
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar, overload

from . import shared
from .brokerurl import parse_broker_urls
from .conf import Conf
from .errors import AmqtaskError, NotRegistered
from .forks import start_afresh_after_fork
from .publisher import Publisher, Sent
from .results import AsyncResult, GroupResult, ResultBackend, open_backend
from .router import Router
from .settings import TASK_OPTION_NAMES, ScheduleEntry, Settings, TaskOptions
from .task import Task, call_options
from .topology.loader import CONFIG_ENV, load_settings, resolve_config_path

if TYPE_CHECKING:
    from .canvas import Signature

F = TypeVar("F", bound=Callable[..., Any])
# Decorator options that shape how the worker runs a task (not message options).
TASK_BEHAVIOUR = ("autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter", "track_started")


class CeleryConfigWarning(UserWarning):
    """config_from_object met a Celery setting it could not translate, one whose absence
    does not change what amqtask does (a monitoring option, say)."""


class TaskRegistry(dict):
    """name -> Task. A missing name raises NotRegistered (a KeyError), as in Celery."""

    def __missing__(self, name: str) -> Task:
        raise NotRegistered(name)


class App:
    """`App("proj", config="routing.yaml")`. Without `config`, $AMQTASK_CONFIG or
    ./routing.yaml is read when it exists; otherwise built-in defaults apply
    (the default exchange, a queue named after each routing key).

    Celery-shaped options: `broker` (a URL, over routing.yaml's), `include` (task
    modules the worker imports), `task_always_eager` and `task_eager_propagates`
    (run tasks here, for tests), `set_as_current` (the App `shared_task` uses;
    the newest such App by default).

    An App holds a connection once it has published: `close()` it (or `await
    aclose()` after async publishing), or use it as a context manager:
    `with App(...) as app:` / `async with App(...) as app:`."""

    def __init__(self, name: str = "amqtask", *, config: str | os.PathLike | None = None,
                 settings: Settings | None = None, result_backend: str | None = None, broker: str | None = None,
                 include: Iterable[str] = (), task_always_eager: bool = False, task_eager_propagates: bool = False,
                 set_as_current: bool = True) -> None:
        self.name = name
        if settings is None:
            path = resolve_config_path(config)
            explicit = config is not None or CONFIG_ENV in os.environ
            settings = load_settings(path) if explicit or Path(path).exists() else Settings()
        if result_backend is not None:
            settings = with_result_backend(settings, result_backend)
        if broker is not None:
            settings = dataclasses.replace(settings, broker=dataclasses.replace(
                settings.broker, urls=parse_broker_urls(broker)))
        self.settings = settings
        self.router = Router(settings)
        self.tasks: dict[str, Task] = TaskRegistry()
        self.periodic_tasks: dict[str, ScheduleEntry] = {}  # added in code; routing.yaml's are in settings
        self.task_always_eager = task_always_eager
        self.task_eager_propagates = task_eager_propagates
        self.imports: tuple[str, ...] = tuple(include)
        self._discover: list[tuple[Any, str | None]] = []
        self._publisher: Publisher | None = None
        self.after_fork()
        start_afresh_after_fork(self)
        shared.register_app(self, default=set_as_current)

    def after_fork(self) -> None:
        """The lock that makes the first concurrent callers share one publisher; a
        forked child gets its own, in case a parent thread held it at the fork. (The
        publisher's connections and reply queue start afresh by themselves.)"""
        self._publisher_lock = threading.Lock()

    @property
    def conf(self) -> Conf:
        """The settings under Celery's names, read-only (see amqtask.conf)."""
        return Conf(self)

    def set_current(self) -> None:
        """Make this the App `shared_task` uses in this thread (or asyncio context)."""
        shared.set_current(self)

    def set_default(self) -> None:
        """Make this the App `shared_task` uses wherever no App was set current."""
        shared.set_default(self)

    def config_from_object(self, obj: Any, *, namespace: str | None = None, silent: bool = False,
                           force: bool = False) -> None:
        """Load a Celery configuration (a module, "module:attribute", a module name, a
        class, a dict) through the translation `amqtask import-celery` uses, replacing
        these settings as Celery's config_from_object replaces its own.

        Settings amqtask cannot translate raise CeleryConfigError (a ConfigError) when their absence
        would change what happens (a Redis broker, a result store other than RabbitMQ,
        message signing, ...); the others warn (CeleryConfigWarning). `silent=True`
        ignores a module that cannot be imported, as in Celery. `force` is accepted
        for Celery's signature: amqtask always loads at once."""
        from .celery_import import CeleryImportError, import_celery
        from .celery_import.report import IGNORED, NOT_TRANSLATED, CeleryConfigError

        try:
            translation = import_celery(obj, namespace=namespace, task_names=list(self.tasks))
        except CeleryImportError:
            if silent:
                return
            raise
        report = translation.report
        if report.blocking:
            raise CeleryConfigError(report.source, report.blocking)
        for entry in report.entries:
            applied_here = entry.target.startswith("App.")  # task_always_eager, imports: set below
            if (entry.status == NOT_TRANSLATED and not applied_here) or (
                    entry.status == IGNORED and "not a Celery setting" in entry.detail):
                warnings.warn(f"{entry.setting}: {entry.status}: {entry.detail}", CeleryConfigWarning, stacklevel=2)
        for problem in report.problems:
            warnings.warn(problem, CeleryConfigWarning, stacklevel=2)
        self.configure(translation.settings)
        options = translation.app_options
        self.task_always_eager = options.get("task_always_eager", self.task_always_eager)
        self.task_eager_propagates = options.get("task_eager_propagates", self.task_eager_propagates)
        self.imports = tuple(dict.fromkeys((*self.imports, *options.get("imports", ()))))

    def autodiscover_tasks(self, packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
                           related_name: str | None = "tasks", force: bool = False) -> None:
        """Import `<package>.tasks` for each package (a list, or a callable returning one,
        such as `lambda: settings.INSTALLED_APPS`). A package without that module is
        skipped; an error inside one is raised. As in Celery, this happens when the
        worker starts (`import_default_modules`), or now with `force=True`."""
        if force:
            _import_related(packages, related_name)
        else:
            self._discover.append((packages, related_name))

    def import_default_modules(self) -> None:
        """Import `include`/`imports` modules and run pending autodiscovery: what a
        worker does before it consumes (load_app, behind `-A`, calls it)."""
        for module in self.imports:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise AmqtaskError(f"cannot import {module!r} (from the App's imports): {exc}") from None
        pending, self._discover = self._discover, []
        for packages, related_name in pending:
            _import_related(packages, related_name)

    def configure(self, settings: Settings) -> None:
        """Replace the settings (e.g. a worker's --config) before anything is sent."""
        self.close()
        self._publisher = None
        self.settings = settings
        self.router = Router(settings)

    @property
    def publisher(self) -> Publisher:
        publisher = self._publisher
        if publisher is not None:
            return publisher
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = Publisher(self.settings, self.router,
                                            results=open_backend(self.settings.results, self.settings.broker))
            return self._publisher

    @property
    def backend(self) -> ResultBackend | None:
        """The result backend (None when results are off): what AsyncResults read."""
        return self.publisher.results

    def result_handle(self, sent: Sent) -> AsyncResult:
        return AsyncResult(sent.task_id, sent.task_name, sent.destination, self.publisher.results)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's spelling
        """A handle for any task id: from any process with redis:// or db+postgresql://,
        from the sending process with rpc://."""
        return AsyncResult(task_id, backend=self.publisher.results)

    def GroupResult(self, group_id: str) -> "GroupResult | None":  # noqa: N802 - Celery's spelling
        """A saved group (GroupResult.save()), restored by id; None when unknown."""
        return GroupResult.restore(group_id, app=self)

    @overload
    def task(self, fn: F) -> Task: ...
    @overload
    def task(self, fn: None = None, *, name: str | None = None, bind: bool = False,
             **options: Any) -> Callable[[F], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, bind: bool = False,
             base: type[Task] | None = None, **options: Any) -> Any:
        """Register a task: `@app.task` or `@app.task(name="proj.add", bind=True, max_retries=3)`.

        `base=MyTask` (a Task subclass) gives the task its class: its on_success,
        on_failure, on_retry, after_return and before_start hooks, and class
        attributes such as `max_retries = 5` or `autoretry_for = (IOError,)` as
        defaults for the options. `max_retries=None` means retry without limit."""
        cls = base or Task
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"base must be a subclass of amqtask.Task, not {cls!r}")
        options = {**_class_options(cls), **options}
        unlimited = "max_retries" in options and options["max_retries"] is None
        if unlimited:  # Celery's max_retries=None: retry without limit
            del options["max_retries"]
        behaviour = {k: options.pop(k) for k in TASK_BEHAVIOUR if k in options}
        unknown = sorted(set(options) - set(TASK_OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(unknown)}")

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            task = cls(self, func, name=task_name, bind=bind, options=TaskOptions(**options),
                       unlimited_retries=unlimited, **behaviour)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def signature(self, name: str, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> "Signature":
        """A signature of a task by name (it need not be imported here)."""
        from .canvas import Signature

        return Signature(name, tuple(args or ()), dict(kwargs or {}), dict(options), app=self)

    def add_periodic_task(self, schedule: Any, sig: Any, args: tuple | list | None = None,
                          kwargs: Mapping[str, Any] | None = None, name: str | None = None, *,
                          missed: str = "run_once", jitter: Any = 0, **options: Any) -> ScheduleEntry:
        """Run `sig` periodically, as Celery's add_periodic_task does: `schedule` is
        seconds, a timedelta, "10s", `crontab(...)` or a datetime (once); `sig` a task,
        a task name or a signature (`add.s(16, 16)`); `options` apply_async options.
        The same name again replaces the schedule. `amqtask beat` runs it."""
        from .beat.entries import periodic_entry

        entry = periodic_entry(self, schedule, sig, args=args, kwargs=kwargs, name=name, missed=missed,
                               jitter=jitter, options=options)
        self.periodic_tasks[entry.name] = entry
        return entry

    def send_task(self, name: str, args: tuple | list | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> AsyncResult:
        """Publish a task by name, for tasks this process does not import. Always
        published, even with task_always_eager (as Celery does)."""
        if self.task_always_eager:
            warnings.warn("task_always_eager has no effect on send_task", RuntimeWarning, stacklevel=2)
        sent = self.publisher.send(name, args or (), kwargs, call=call_options(options))
        return self.result_handle(sent)

    async def send_task_async(self, name: str, args: tuple | list | None = None,
                              kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        sent = await self.publisher.send_async(name, args or (), kwargs, call=call_options(options))
        return self.result_handle(sent)

    def close(self) -> None:
        """Close the connection and the reply queue this App opened (if any). The App
        stays usable: the next publish opens a new connection."""
        if self._publisher is not None:
            self._publisher.close()

    async def aclose(self) -> None:
        """Close the asyncio connection, then what the App holds besides (results come
        back on a blocking consumer whose reply queue is deleted here, not left to expire)."""
        if self._publisher is not None:
            await self._publisher.aclose()
            await asyncio.to_thread(self._publisher.close)

    def __enter__(self) -> "App":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "App":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _class_options(cls: type[Task]) -> dict[str, Any]:
    """Options a Task subclass sets as class attributes (Celery's way of giving a base
    class max_retries, autoretry_for, rate_limit, ...)."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:cls.__mro__.index(Task)]):
        found.update({k: v for k, v in vars(klass).items() if k in TASK_OPTION_NAMES or k in TASK_BEHAVIOUR})
    return found


def _import_related(packages: Iterable[str] | Callable[[], Iterable[str]] | None, related_name: str | None) -> None:
    for package in (packages() if callable(packages) else packages) or ():
        _related_module(str(package), related_name)


def _related_module(package: str, related_name: str | None) -> Any:
    """`package.related_name`, or None when the package has no such module."""
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        parent = package.rpartition(".")[0]
        if exc.name != package or not parent:  # Django names an app by its config class: try its package
            raise
        package, module = parent, importlib.import_module(parent)
    if not related_name:
        return module
    name = f"{package}.{related_name}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def with_result_backend(settings: Settings, url: str) -> Settings:
    """`settings` with results stored at `url` (rpc://, redis://..., db+postgresql://...)."""
    from .topology.loader import result_backend_problem

    problem = result_backend_problem(url)
    if problem:
        raise AmqtaskError(problem)
    return replace(settings, results=replace(settings.results, backend=url, enabled=True))


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
    app = _app_in(module, module_name, attribute, spec)
    app.import_default_modules()  # include/imports and autodiscover_tasks, as a Celery worker does
    return app


def _app_in(module: Any, module_name: str, attribute: str, spec: str) -> App:
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
