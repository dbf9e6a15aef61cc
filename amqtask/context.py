"""`self.request` outside a worker, with Celery's values: a task called directly
(`add(2, 3)`) or run eagerly (`task_always_eager`, `task.apply()`)."""
from __future__ import annotations

import socket
from dataclasses import dataclass

from .worker.request import Request


@dataclass(frozen=True)
class LocalRequest(Request):
    """As Celery's Context: outside any run, `id` is None and `called_directly` is
    true; an eager run has an id, `is_eager` true and `called_directly` false."""

    is_eager: bool = False
    called_directly: bool = True

    @property
    def delivery_info(self) -> dict:
        return {"is_eager": self.is_eager, "exchange": self.exchange or None,
                "routing_key": self.routing_key or None, "queue": self.queue or None, "redelivered": False}


def direct_request(task_name: str, args: tuple = (), kwargs: dict | None = None) -> LocalRequest:
    """The request of a task called as a plain function."""
    return LocalRequest(id=None, task=task_name, args=args, kwargs=kwargs or {})  # type: ignore[arg-type]


def eager_request(task_name: str, task_id: str, args: tuple, kwargs: dict, *, retries: int,
                  parent: Request | None) -> LocalRequest:
    root = (parent.root_id or parent.id) if parent is not None and parent.id else task_id
    return LocalRequest(id=task_id, task=task_name, args=tuple(args), kwargs=dict(kwargs), retries=retries,
                        root_id=root, parent_id=parent.id if parent is not None else None,
                        hostname=socket.gethostname(), is_eager=True, called_directly=False)
