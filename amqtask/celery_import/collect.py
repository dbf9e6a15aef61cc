"""The state of one translation run: settings still to handle, what became of each,
and the routing.yaml being assembled. Created per run; nothing here is shared."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .names import Normalized, Setting
from .report import CHANGED, IGNORED, IMPLICIT, NOT_TRANSLATED, TRANSLATED, Entry
from .routing import ExchangeDecl, QueueDecl, RuleDecl
from .schedules import ScheduleDecl


class Raw(str):
    """A YAML scalar written as is (a `${VAR:-default}` the loader must expand)."""


@dataclass
class Model:
    """routing.yaml as data: each section maps a key to (value, comment)."""

    header: list[str] = field(default_factory=list)
    broker: dict[str, tuple[Any, str]] = field(default_factory=dict)
    defaults: dict[str, tuple[Any, str]] = field(default_factory=dict)
    defaults_note: str = ""
    exchanges: dict[str, ExchangeDecl] = field(default_factory=dict)
    exchange_notes: dict[str, str] = field(default_factory=dict)
    queues: dict[str, QueueDecl] = field(default_factory=dict)
    routes: list[RuleDecl] = field(default_factory=list)
    tasks: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    worker: dict[str, tuple[Any, str]] = field(default_factory=dict)
    results: dict[str, tuple[Any, str]] = field(default_factory=dict)
    schedules: list[ScheduleDecl] = field(default_factory=list)
    timezone: tuple[str, str] | None = None


class Run:
    """Takes settings one by one and records what became of each."""

    def __init__(self, normalized: Normalized) -> None:
        self.settings = dict(normalized.settings)
        self.defaults = normalized.defaults
        self.entries: list[Entry] = list(normalized.ignored)
        self.problems: list[str] = list(normalized.problems)
        self.model = Model()
        self.app_options: dict[str, Any] = {}
        self._taken: set[str] = set()

    # -- reading -------------------------------------------------------------------
    def take(self, key: str) -> Setting | None:
        """The setting if the source sets it; it then counts as handled."""
        self._taken.add(key)
        return self.settings.get(key)

    def peek(self, key: str) -> Any:
        """The value Celery uses: the source's, else Celery's default (not marked handled)."""
        found = self.settings.get(key)
        return found.value if found is not None else self.defaults.get(key)

    def untaken(self) -> list[Setting]:
        return [s for k, s in self.settings.items() if k not in self._taken]

    def is_default(self, setting: Setting) -> bool:
        return setting.key in self.defaults and self.defaults[setting.key] == setting.value

    # -- recording -----------------------------------------------------------------
    def translated(self, setting: Setting | str, target: str, detail: str) -> None:
        self.entries.append(Entry(_name(setting), TRANSLATED, detail, target))

    def changed(self, setting: Setting | str, target: str, detail: str) -> None:
        self.entries.append(Entry(_name(setting), CHANGED, detail, target))

    def untranslated(self, setting: Setting | str, detail: str, *, behaviour: bool = False, target: str = "") -> None:
        self.entries.append(Entry(_name(setting), NOT_TRANSLATED, detail, target, changes_behaviour=behaviour))

    def ignored(self, setting: Setting | str, detail: str) -> None:
        self.entries.append(Entry(_name(setting), IGNORED, detail))

    def implicit(self, name: str, target: str, detail: str) -> None:
        self.entries.append(Entry(name, IMPLICIT, detail, target))

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


def _name(setting: Setting | str) -> str:
    return setting if isinstance(setting, str) else setting.written
