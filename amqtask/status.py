"""Queue status without the management plugin: for every queue in routing.yaml, its
ready messages and consumers and the depth of its dead-letter queue, from passive
declares (which never create anything). A queue that does not exist is reported as
missing; it does not stop the listing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .deadletters import dead_letter_queues
from .topology.model import Topology


@dataclass(frozen=True)
class Depth:
    messages: int
    consumers: int


@dataclass(frozen=True)
class QueueStatus:
    name: str
    depth: Depth | None  # None: the queue does not exist
    dead_queues: tuple[str, ...]
    dead: int | None  # messages in the dead-letter queues that exist; None: none of them exists

    @property
    def missing(self) -> bool:
        return self.depth is None


def collect(topology: Topology, inspect: Callable[[str], Depth | None]) -> list[QueueStatus]:
    """One row per queue of `topology`, in routing.yaml's order. `inspect(name)` is a
    passive declare: the queue's depth, or None when it does not exist."""
    seen: dict[str, Depth | None] = {}

    def depth(name: str) -> Depth | None:
        if name not in seen:
            seen[name] = inspect(name)
        return seen[name]

    rows = []
    for name, spec in topology.queues.items():
        dead_queues = () if spec.queue_type == "stream" else dead_letter_queues(topology, name)
        dead_depths = [d for d in (depth(q) for q in dead_queues) if d is not None]
        rows.append(QueueStatus(name, depth(name), dead_queues,
                                sum(d.messages for d in dead_depths) if dead_depths else None))
    return rows


def table_rows(rows: list[QueueStatus]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [("QUEUE", "READY", "CONSUMERS", "DEAD", "DEAD-LETTER QUEUE")]
    for row in rows:
        dead = "-" if row.dead is None else str(row.dead)
        where = ", ".join(row.dead_queues) or "-"
        if row.depth is None:
            out.append((row.name, "missing", "-", dead, where))
        else:
            out.append((row.name, str(row.depth.messages), str(row.depth.consumers), dead, where))
    return out
