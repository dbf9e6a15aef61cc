"""The exception hierarchy: everything amqtask raises derives from AmqtaskError."""
from __future__ import annotations


class AmqtaskError(Exception):
    """Root of every error amqtask raises on purpose."""


class ConfigError(AmqtaskError):
    """routing.yaml (or an option) is invalid; `problems` lists every finding."""

    def __init__(self, problems: list) -> None:  # list[Problem]; typed loosely to avoid an import cycle
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems) or "invalid configuration")


class RoutingError(AmqtaskError):
    """A task cannot be routed: no rule, an unknown exchange or queue, no queue reached."""


class ScheduleError(AmqtaskError, ValueError):
    """A periodic schedule is invalid: a bad crontab field, duration, time or option."""


class SerializationError(AmqtaskError):
    """A payload cannot be encoded or decoded, or its content type is not accepted."""


class ContentDisallowed(SerializationError):
    """The content type is not in the accept list (pickle is refused by default)."""


class ProtocolError(AmqtaskError):
    """A message does not follow Celery's protocol v2."""


class BrokerError(AmqtaskError):
    """The broker cannot be reached or refused an operation."""


class BrokerUnavailable(BrokerError):
    """No broker URL answered within the configured time."""


class PublishError(BrokerError):
    """A publish was not confirmed by the broker."""


class UnroutableError(PublishError):
    """The broker returned a mandatory message: no queue is bound for it."""

    def __init__(self, exchange: str, routing_key: str, reply_text: str = "NO_ROUTE") -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        shown = exchange or "(default exchange)"
        super().__init__(
            f"unroutable: exchange {shown!r} routing key {routing_key!r} reaches no queue ({reply_text})"
        )


class NackError(PublishError):
    """The broker negatively acknowledged a publish (queue full with reject-publish, internal error)."""


class DeclareConflict(BrokerError):
    """An existing exchange or queue has other arguments than routing.yaml declares (406)."""

    def __init__(self, kind: str, name: str, detail: str) -> None:
        self.kind = kind
        self.name = name
        self.detail = detail
        super().__init__(f"{kind} {name!r} already exists with different arguments: {detail}")


class Ignore(AmqtaskError):
    """Raised by a task: acknowledge its message and record nothing (no result, no
    retry, no failure), as Celery's Ignore."""


class NotRegistered(AmqtaskError, KeyError):
    """No task of this name is registered in the App (a KeyError, as Celery's)."""

    def __str__(self) -> str:  # KeyError would show the repr of the name
        return f"task {self.args[0]!r} is not registered" if self.args else "task not registered"


class BlockingGetError(AmqtaskError, RuntimeError):
    """`result.get()` inside a running task: refused, as Celery refuses it (a
    RuntimeError), because the worker slot would wait on work that may need it."""
