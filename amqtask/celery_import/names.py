"""Celery's setting names, from Celery's own table: the lower-case names of Celery 4+,
the old upper-case ones (BROKER_URL, CELERYD_CONCURRENCY, ...), and the namespaced
form a Django project loads with `namespace="CELERY"` (CELERY_BROKER_URL)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from .report import IGNORED, Entry
from .source import require_celery

# Celery's namespaces (worker_, task_, ...): a misspelt short name is matched against
# the part after them, so `concurrunt` suggests worker_concurrency.
_NAMESPACES = ("worker_", "task_", "broker_", "result_", "beat_", "event_", "control_", "security_")


@dataclass(frozen=True)
class Setting:
    written: str  # the name in the source, e.g. CELERYD_CONCURRENCY
    key: str  # Celery's current name, e.g. worker_concurrency
    value: Any


@dataclass(frozen=True)
class Normalized:
    settings: Mapping[str, Setting]  # by Celery's current name
    ignored: tuple[Entry, ...] = ()
    problems: tuple[str, ...] = ()
    old_names: bool = False  # the source uses the old upper-case names
    defaults: Mapping[str, Any] = field(default_factory=dict)  # Celery's defaults, by current name


def _table() -> tuple[frozenset[str], Mapping[str, str], Mapping[str, Any]]:
    require_celery()
    from celery.app import defaults

    # _TO_NEW_KEY (old name -> new name) has been Celery's compat table since 4.0;
    # it is the only place that knows every old name.
    return frozenset(defaults.SETTING_KEYS), defaults._TO_NEW_KEY, defaults.DEFAULTS


def is_setting_name(name: str) -> bool:
    keys, old, _ = _table()
    return name in keys or name in old


def normalize(raw: Mapping[str, Any], *, namespace: str | None = None, check_mixing: bool = True) -> Normalized:
    """Map every name to Celery's current one, the way Celery reads the object:
    with a namespace only `NAMESPACE_` names count (in the new form); otherwise new
    and old names are both understood (Celery refuses a mix; that is reported)."""
    keys, old, defaults = _table()
    settings: dict[str, Setting] = {}
    ignored: list[Entry] = []
    prefix = f"{namespace.upper()}_" if namespace else ""
    for written, value in raw.items():
        key = _current_name(written, prefix, keys, old)
        if key is None:
            ignored.append(Entry(written, IGNORED, _unknown_reason(written, prefix, keys, old)))
        elif key in settings and settings[key].written == key:
            ignored.append(Entry(written, IGNORED, f"also set as {key}, which Celery uses"))
        else:
            if key in settings:
                ignored.append(Entry(settings[key].written, IGNORED, f"also set as {written}, which Celery uses"))
            settings[key] = Setting(written, key, value)
    problems = _mixing_problem(raw, keys, old) if check_mixing and not prefix else ()
    uses_old = any(s.written in old for s in settings.values())
    return Normalized(settings, tuple(ignored), problems, uses_old, defaults)


def _current_name(written: str, prefix: str, keys: frozenset[str], old: Mapping[str, str]) -> str | None:
    if prefix:
        if not written.startswith(prefix):
            return None
        candidate = written[len(prefix):].lower()
        return candidate if candidate in keys else None
    if written in keys:
        return written
    return old.get(written)


def _unknown_reason(written: str, prefix: str, keys: frozenset[str], old: Mapping[str, str]) -> str:
    if prefix and not written.startswith(prefix):
        return f"outside the namespace {prefix[:-1]!r}: Celery does not read it"
    reason = "not a Celery setting: Celery ignores it too"
    if not prefix and written.startswith("CELERY_") and written[7:].lower() in keys:
        return (f"{reason} (it is the namespaced form of {written[7:].lower()}: Celery reads it only with "
                f"config_from_object(..., namespace='CELERY'); pass --namespace CELERY if the app does)")
    hint = _did_you_mean(written.removeprefix(prefix).lower() if prefix else written, keys, old)
    return f"{reason}; did you mean {hint}?" if hint else reason


def _did_you_mean(name: str, keys: frozenset[str], old: Mapping[str, str]) -> str | None:
    close = difflib.get_close_matches(name, list(keys) + list(old), n=1, cutoff=0.8)
    if close:
        return close[0]
    short = {k[len(ns):]: k for k in keys for ns in _NAMESPACES if k.startswith(ns)}
    close = difflib.get_close_matches(name.lower(), list(short), n=1, cutoff=0.7)
    return short[close[0]] if close else None


def _mixing_problem(raw: Mapping[str, Any], keys: frozenset[str], old: Mapping[str, str]) -> tuple[str, ...]:
    """Celery refuses a configuration that mixes old and new names (ImproperlyConfigured)."""
    from celery.app.utils import detect_settings
    from celery.exceptions import ImproperlyConfigured

    known = {k: v for k, v in raw.items() if k in keys or k in old}
    try:
        detect_settings(known)
    except ImproperlyConfigured as exc:
        renames = [" ".join(line.split()) for line in str(exc).splitlines() if "->" in line]
        return (f"Celery refuses to load this configuration: it mixes old and new setting names "
                f"(rename {', '.join(renames)}); translated as if renamed",)
    return ()
