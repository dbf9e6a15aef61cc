"""What became of each Celery setting: the report `amqtask import-celery` prints and
`App.config_from_object` acts on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ConfigError

TRANSLATED = "translated"
CHANGED = "changed in meaning"
NOT_TRANSLATED = "not translated"
IGNORED = "ignored"
IMPLICIT = "implicit Celery default"
STATUSES = (TRANSLATED, CHANGED, IMPLICIT, NOT_TRANSLATED, IGNORED)


@dataclass(frozen=True)
class Entry:
    """One setting (as written in the source) and its fate.

    `target` names where it went in routing.yaml ("broker.url"); `detail` says what
    it became, how its meaning changed, or why it could not be translated.
    `changes_behaviour` marks an untranslated setting whose absence makes amqtask
    behave differently from Celery (config_from_object refuses those)."""

    setting: str
    status: str
    detail: str
    target: str = ""
    changes_behaviour: bool = False

    def line(self) -> str:
        where = f" -> {self.target}" if self.target else ""
        return f"{self.setting}{where}: {self.detail}"


@dataclass(frozen=True)
class Report:
    source: str
    entries: tuple[Entry, ...] = ()
    problems: tuple[str, ...] = ()  # what Celery itself refuses, loses or does oddly
    checked_routes: tuple[str, ...] = ()  # "name -> exchange/key (queues)" agreed with Celery's router
    warnings: tuple[str, ...] = field(default=())  # what `amqtask check` says about the output

    def by_status(self, status: str) -> list[Entry]:
        return [e for e in self.entries if e.status == status]

    @property
    def blocking(self) -> list[Entry]:
        """Untranslated settings that would make amqtask behave differently."""
        return [e for e in self.entries if e.status == NOT_TRANSLATED and e.changes_behaviour]

    def format(self) -> str:
        lines = [f"import-celery: {self.source}"]
        for status in STATUSES:
            entries = self.by_status(status)
            if entries:
                lines.append(f"{status} ({len(entries)}):")
                lines.extend(f"  {e.line()}" + ("  [changes behaviour]" if e.changes_behaviour else "")
                             for e in entries)
        if self.problems:
            lines.append(f"problems in the Celery configuration itself ({len(self.problems)}):")
            lines.extend(f"  {p}" for p in self.problems)
        if self.checked_routes:
            lines.append(f"routes that agree with Celery's router ({len(self.checked_routes)} task names):")
            lines.extend(f"  {r}" for r in self.checked_routes)
        if self.warnings:
            lines.append("amqtask check warns about the output:")
            lines.extend(f"  {w}" for w in self.warnings)
        return "\n".join(lines)


class CeleryConfigError(ConfigError):
    """Settings with no amqtask equivalent whose absence would change what happens
    (a Redis broker, results in Redis, message signing, ...): refused, each named."""

    def __init__(self, source: str, entries: Sequence[Entry]) -> None:
        self.entries = tuple(entries)
        lines = [f"{source}: {len(self.entries)} Celery setting(s) have no amqtask equivalent and would change "
                 "what happens:"] + [f"  {e.setting}: {e.detail}" for e in self.entries]
        super().__init__(lines)
