"""`@shared_task` and the current App, for code that must not import a particular App
(a reusable library, a Django app's tasks.py):

    from amqtask import shared_task

    @shared_task(bind=True, max_retries=None)
    def send_welcome(self, user_id): ...

    send_welcome.delay(42)   # through the current App (the last one created, unless set)

A shared task belongs to every App, those that exist and those created later, as in
Celery; using it resolves the current App lazily, at call time. This is the one place
that keeps process-wide state, because "every App in the process" is what it means."""
from __future__ import annotations

import contextvars
import functools
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .app import App
    from .task import Task

# An App made current for this thread or task context (App.set_current()).
_current: contextvars.ContextVar["App | None"] = contextvars.ContextVar("amqtask_current_app", default=None)


class _Shared:
    """Shared task definitions, the live Apps they belong to, and the default App."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.apps: "weakref.WeakSet[App]" = weakref.WeakSet()
        self.definitions: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
        self.default: "weakref.ref[App] | None" = None

    def add_app(self, app: "App", *, default: bool) -> None:
        with self.lock:
            self.apps.add(app)
            if default:
                self.default = weakref.ref(app)
            definitions = list(self.definitions.items())
        for name, (fn, options) in definitions:
            _register(app, name, fn, options)

    def define(self, name: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        with self.lock:
            self.definitions[name] = (fn, options)
            apps = list(self.apps)
        for app in apps:
            _register(app, name, fn, options)

    def default_app(self) -> "App | None":
        return self.default() if self.default is not None else None


_SHARED = _Shared()


def _register(app: "App", name: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    if name not in app.tasks:  # a task the App defines itself under that name wins
        app.task(fn, name=name, **options)


def register_app(app: "App", *, default: bool) -> None:
    """Called by App(): give it every shared task; make it the default if asked."""
    _SHARED.add_app(app, default=default)


def set_current(app: "App") -> contextvars.Token:
    return _current.set(app)


def set_default(app: "App") -> None:
    with _SHARED.lock:
        _SHARED.default = weakref.ref(app)


def current_app() -> "App":
    """The App set current in this context, else the default App (the last one created
    with set_as_current=True); if there is none, a default App is created from
    $AMQTASK_CONFIG or ./routing.yaml, as Celery creates its default app."""
    app = _current.get() or _SHARED.default_app()
    if app is None:
        from .app import App

        app = App("default")
    return app


class SharedTask:
    """Stands for the task of that name in the current App: calling it, `delay()`,
    `apply_async()` and every other attribute go to that App's task."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.name = name
        self._shared_name = name  # signals treat a shared task as its name
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def _task(self) -> "Task":
        app = current_app()
        if self.name not in app.tasks:  # an App created while the definition was being added
            fn, options = _SHARED.definitions[self.name]
            _register(app, self.name, fn, options)
        return app.tasks[self.name]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self._task(), attribute)

    def __repr__(self) -> str:
        return f"<shared task {self.name}>"


def shared_task(fn: Callable[..., Any] | None = None, *, name: str | None = None, **options: Any) -> Any:
    """`@shared_task` or `@shared_task(name=..., bind=True, base=..., max_retries=...)`:
    the same options as `@app.task`, for every App."""

    def define(func: Callable[..., Any]) -> SharedTask:
        task_name = name or f"{func.__module__}.{func.__qualname__}"
        _SHARED.define(task_name, func, dict(options))
        return SharedTask(func, task_name)

    return define(fn) if fn is not None else define
