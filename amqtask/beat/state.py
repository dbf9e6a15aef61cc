"""The leader's state, carried in the token message: per schedule, up to which
instant everything is handled and which instant last ran; plus who leads.

Tokens merge: per schedule the later cursor wins, so a stray second token (two
beats that bootstrapped at once, a token returned by a dead leader) can only add
knowledge, never roll a schedule back.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..errors import AmqtaskError

UTC = dt.timezone.utc
FORMAT_VERSION = 1
# uuid5 namespace of scheduled task ids: uuid5(SCHEDULE_NAMESPACE, f"{name}@{instant}")
SCHEDULE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "amqtask:schedule")


class StateError(AmqtaskError):
    """A token or status message is not a beat state."""


def format_instant(instant: dt.datetime) -> str:
    """The canonical text of an instant: UTC, ISO 8601, 'Z', microseconds only when set."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def parse_instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"instant {text!r} has no offset")
    return value.astimezone(UTC)


def scheduled_task_id(name: str, instant: dt.datetime) -> str:
    """The task id of schedule `name`'s run at `instant`: every beat derives the same one."""
    return str(uuid.uuid5(SCHEDULE_NAMESPACE, f"{name}@{format_instant(instant)}"))


@dataclass(frozen=True)
class EntryState:
    cursor: dt.datetime  # every run instant at or before this is handled (sent, or skipped as missed)
    spec: str  # the timing it was computed for; another timing starts afresh
    last_run: dt.datetime | None = None  # the last instant actually sent


@dataclass(frozen=True)
class BeatState:
    seq: int = 0
    entries: Mapping[str, EntryState] = field(default_factory=dict)
    leader: str = ""
    leading_since: dt.datetime | None = None
    updated: dt.datetime | None = None

    def merged(self, other: "BeatState") -> "BeatState":
        """Both states' knowledge: the higher seq's leader fields, per entry the later cursor."""
        newer, older = (self, other) if self.seq >= other.seq else (other, self)
        entries = dict(older.entries)
        for name, mine in newer.entries.items():
            theirs = entries.get(name)
            if theirs is None or theirs.spec != mine.spec or mine.cursor >= theirs.cursor:
                entries[name] = _with_last_run(mine, theirs)
            else:
                entries[name] = _with_last_run(theirs, mine)
        return replace(newer, entries=entries)

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "seq": self.seq,
            "leader": self.leader,
            "leading_since": _opt(self.leading_since),
            "updated": _opt(self.updated),
            "entries": {name: {"cursor": format_instant(e.cursor), "spec": e.spec, "last_run": _opt(e.last_run)}
                        for name, e in sorted(self.entries.items())},
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> "BeatState":
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
                raise ValueError(f"not a version {FORMAT_VERSION} beat state")
            entries = {
                str(name): EntryState(parse_instant(e["cursor"]), str(e["spec"]),
                                      parse_instant(e["last_run"]) if e.get("last_run") else None)
                for name, e in dict(data.get("entries") or {}).items()
            }
            return cls(
                seq=int(data["seq"]),
                entries=entries,
                leader=str(data.get("leader") or ""),
                leading_since=parse_instant(data["leading_since"]) if data.get("leading_since") else None,
                updated=parse_instant(data["updated"]) if data.get("updated") else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"not a beat state: {exc}") from None


def _with_last_run(chosen: EntryState, other: EntryState | None) -> EntryState:
    if other is None or other.spec != chosen.spec or other.last_run is None:
        return chosen
    if chosen.last_run is None or other.last_run > chosen.last_run:
        return replace(chosen, last_run=other.last_run)
    return chosen


def _opt(instant: dt.datetime | None) -> str | None:
    return None if instant is None else format_instant(instant)
