"""Result handles returned by delay(), apply_async() and send_task()."""
from __future__ import annotations

from dataclasses import dataclass

from .router import Destination


@dataclass(frozen=True)
class AsyncResult:
    """A handle on a published task: its id and where it was sent."""

    id: str
    task_name: str = ""
    destination: Destination | None = None

    @property
    def task_id(self) -> str:
        return self.id

    def __str__(self) -> str:
        return self.id
