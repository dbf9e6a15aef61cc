"""What the handler tells the outside world at each point of a message's life: Celery
task events (for Flower and `celery events`) and Prometheus metrics. The handler
calls an `Observer`; the default one does nothing, so tests and TestBroker pay
nothing. Every call is cheap and never blocks (events go to a bounded buffer)."""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from ..metrics import NullMetrics
from ..protocol import TaskMessage

if TYPE_CHECKING:
    from ..events.dispatcher import EventDispatcher
    from .execute import Outcome


class Observer:
    """Does nothing; `MonitorObserver` sends events and records metrics."""

    @property
    def wants_values(self) -> bool:
        """Whether task-succeeded needs the return value (task events are on)."""
        return False

    def received(self, message: TaskMessage, headers: Any) -> None: ...

    def started(self, message: TaskMessage) -> None: ...

    def succeeded(self, message: TaskMessage, outcome: "Outcome") -> None: ...

    def retried(self, message: TaskMessage, outcome: "Outcome") -> None: ...

    def failed(self, message: TaskMessage, outcome: "Outcome") -> None: ...

    def revoked(self, message: TaskMessage, *, expired: bool = False, terminated: bool = False) -> None: ...

    def rejected(self, message: TaskMessage, *, requeue: bool) -> None: ...

    def dead_lettered(self, reason: str) -> None: ...


class MonitorObserver(Observer):
    def __init__(self, events: "EventDispatcher | None" = None, metrics: NullMetrics | None = None) -> None:
        self.events = events
        self.metrics = metrics or NullMetrics()

    @property
    def wants_values(self) -> bool:
        return self.events is not None and self.events.task_events

    def received(self, message: TaskMessage, headers: Any) -> None:
        self.metrics.task_received(message.task)
        if self.events is not None and self.events.task_events:
            # Celery sends the message's own argsrepr/kwargsrepr, not the values.
            self.events.task_received(
                uuid=message.id, name=message.task, args=_text(headers.get("argsrepr"), message.args),
                kwargs=_text(headers.get("kwargsrepr"), message.kwargs), root_id=message.root_id,
                parent_id=message.parent_id, retries=message.retries, eta=_iso(message.eta),
                expires=_iso(message.expires))

    def started(self, message: TaskMessage) -> None:
        self.metrics.task_started(message.task)
        if self.events is not None:
            self.events.task_started(uuid=message.id)

    def succeeded(self, message: TaskMessage, outcome: "Outcome") -> None:
        self.metrics.task_finished(message.task, "succeeded", outcome.runtime)
        if self.events is not None:
            self.events.task_succeeded(uuid=message.id, result=outcome.value, runtime=outcome.runtime)

    def retried(self, message: TaskMessage, outcome: "Outcome") -> None:
        self.metrics.task_finished(message.task, "retried", outcome.runtime)
        if self.events is not None:
            self.events.task_retried(uuid=message.id, exception=_exception(outcome), traceback=outcome.traceback)

    def failed(self, message: TaskMessage, outcome: "Outcome") -> None:
        self.metrics.task_finished(message.task, "failed", outcome.runtime)
        if self.events is not None:
            self.events.task_failed(uuid=message.id, exception=_exception(outcome), traceback=outcome.traceback)

    def revoked(self, message: TaskMessage, *, expired: bool = False, terminated: bool = False) -> None:
        self.metrics.task_finished(message.task, "revoked")
        if self.events is not None:
            self.events.task_revoked(uuid=message.id, expired=expired, terminated=terminated)

    def rejected(self, message: TaskMessage, *, requeue: bool) -> None:
        self.metrics.task_finished(message.task, "rejected")
        if self.events is not None:
            self.events.task_rejected(uuid=message.id, requeue=requeue)

    def dead_lettered(self, reason: str) -> None:
        self.metrics.dead_lettered(reason)


def _text(shown: Any, value: Any) -> str:
    return shown if isinstance(shown, str) else repr(value)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _exception(outcome: "Outcome") -> str:
    """Celery's event shows the exception's repr: `ValueError('boom')`."""
    payload = outcome.exc_payload or {}
    args = payload.get("exc_message") or []
    args = args if isinstance(args, (list, tuple)) else [args]
    name = payload.get("exc_type") or "Exception"
    return f"{name}({', '.join(repr(a) for a in args)})" if payload else (outcome.reason or "")


__all__ = ["Observer", "MonitorObserver"]
