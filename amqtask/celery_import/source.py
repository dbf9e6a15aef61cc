"""Find a Celery configuration: a module name, a `.py` file, `module:attribute`, or
an object already in hand (a module, a class, a dict, a Celery app)."""
from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import os
import sys
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import AmqtaskError

# Values that can be a setting. Functions, classes and modules at a config module's
# top level are helpers or imports (a router function is *referenced* by a setting).
_DATA = (str, bytes, int, float, bool, list, tuple, dict, set, frozenset, type(None), dt.timedelta)


class CeleryImportError(AmqtaskError):
    """The Celery configuration cannot be read (not found, does not import, not a config)."""


@dataclass(frozen=True)
class CeleryConfig:
    """Settings as written (old or new names, possibly namespaced) and the task names
    of a Celery app found with them."""

    origin: str
    settings: Mapping[str, Any]
    task_names: tuple[str, ...] = ()
    from_app: bool = False


def require_celery() -> Any:
    """Celery's own settings table and router are the reference; they come with Celery."""
    try:
        import celery
    except ImportError:
        raise CeleryImportError("reading a Celery configuration needs Celery itself (its settings table and "
                                "router): pip install 'amqtask[celery]'") from None
    return celery


def load_config(spec: Any) -> CeleryConfig:
    """`spec` is a module name, a path to a .py file, "module:attribute", or an object."""
    if isinstance(spec, (str, os.PathLike)):
        return config_of(_resolve(os.fspath(spec)), origin=os.fspath(spec))
    return config_of(spec, origin=getattr(spec, "__name__", type(spec).__name__))


def _resolve(spec: str) -> Any:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        return _load_file(path)
    module_name, _, attribute = spec.partition(":")
    module = _import(module_name)
    if not attribute:
        return module
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise CeleryImportError(f"{module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    return found


def _import(module_name: str) -> types.ModuleType:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `celery -A` and `python -m` do
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CeleryImportError(f"no module named {module_name!r} (give a module name importable from "
                                    f"here, or a path to a .py file)") from None
        raise CeleryImportError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while importing: say what, not a traceback
        raise CeleryImportError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None


def _load_file(path: Path) -> types.ModuleType:
    if not path.is_file():
        raise CeleryImportError(f"no such file: {path}")
    # A unique name: the file is not a package member, and must not shadow one.
    name = f"_amqtask_celery_config_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CeleryImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    parent = str(path.resolve().parent)
    added = parent not in sys.path
    if added:
        sys.path.insert(0, parent)  # so the file can import its neighbours, as when run
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise CeleryImportError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        raise CeleryImportError(f"running {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(parent)
    return module


def config_of(obj: Any, *, origin: str) -> CeleryConfig:
    """The settings an object holds, the way Celery's config_from_object reads them."""
    celery = require_celery()
    if isinstance(obj, celery.Celery):
        return _app_config(obj, origin)
    if isinstance(obj, types.ModuleType):
        apps = [v for v in vars(obj).values() if isinstance(v, celery.Celery)]
        if len(apps) == 1 and not _settings_of(vars(obj)):
            return _app_config(apps[0], origin)
        return CeleryConfig(origin, _settings_of(vars(obj)))
    if isinstance(obj, Mapping):
        return CeleryConfig(origin, {str(k): v for k, v in obj.items()})
    if isinstance(obj, _DATA):
        raise CeleryImportError(f"{origin}: a {type(obj).__name__} is not a Celery configuration")
    # A class or an instance holding settings as attributes, as config_from_object accepts.
    names = {k: getattr(obj, k) for k in dir(obj) if not k.startswith("_")}
    return CeleryConfig(origin, _settings_of(names))


def _settings_of(namespace: Mapping[str, Any]) -> dict[str, Any]:
    from .names import is_setting_name

    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and (is_setting_name(k) or isinstance(v, _DATA))}


def _app_config(app: Any, origin: str) -> CeleryConfig:
    try:
        table = app.conf.table(with_defaults=False, censored=False)
    except Exception as exc:  # Celery refuses the app's own configuration (e.g. mixed old and new names)
        raise CeleryImportError(f"{origin}: Celery cannot load this app's configuration: {exc}") from None
    settings = {k: v for k, v in table.items() if k != "deprecated_settings" and not k.startswith("_")}
    names = tuple(sorted(n for n in app.tasks if not n.startswith("celery.")))
    return CeleryConfig(origin, settings, names, from_app=True)
