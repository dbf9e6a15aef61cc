"""Celery's event messages, built exactly as Celery 5 builds them.

An event is a flat JSON object. Every one carries `type`, `hostname` (the node
name), `timestamp` (seconds since the epoch), `utcoffset` (hours *west* of UTC,
Celery's sign convention), `pid` and `clock` (the node's Lamport clock). Worker
events add `freq`, `active`, `processed`, `loadavg`, `sw_ident`, `sw_ver`,
`sw_sys`; task events add `uuid` and the fields of their type (see the methods
below). References: celery/events/dispatcher.py, celery/worker/heartbeat.py,
celery/worker/strategy.py, celery/worker/request.py.
"""
from __future__ import annotations

import math
import os
import platform
import reprlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import __version__
from .clock import LamportClock

WORKER_ONLINE = "worker-online"
WORKER_HEARTBEAT = "worker-heartbeat"
WORKER_OFFLINE = "worker-offline"
TASK_RECEIVED = "task-received"
TASK_STARTED = "task-started"
TASK_SUCCEEDED = "task-succeeded"
TASK_FAILED = "task-failed"
TASK_RETRIED = "task-retried"
TASK_REVOKED = "task-revoked"
TASK_REJECTED = "task-rejected"

WORKER_GROUP = "worker"
TASK_GROUP = "task"

# Celery's `resultrepr_maxsize` default, and the bound on exception reprs and tracebacks.
RESULT_REPR_MAX = 1024
TRACEBACK_MAX = 16_384

_repr = reprlib.Repr()
_repr.maxstring = RESULT_REPR_MAX
_repr.maxother = RESULT_REPR_MAX
_repr.maxlevel = 4
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 64


def utcoffset(*, localtime: Callable[[], time.struct_time] = time.localtime,
              timezone: int = time.timezone, altzone: int = time.altzone) -> float:
    """This host's offset from UTC in hours, positive *west* of UTC (`time.timezone`'s
    sign, not ISO 8601's), as Celery 5.7 computes it: true division, so that UTC+5:30
    is -5.5. Receivers shift a timestamp by `(offset - their own offset) * 3600`."""
    return (altzone if localtime().tm_isdst else timezone) / 3600


def group_of(event_type: str) -> str:
    """'task-received' -> 'task': the group that enable/disable_events switch."""
    return event_type.split("-", 1)[0]


def routing_key(event_type: str) -> str:
    """The routing key an event is published with on `celeryev`: '-' becomes '.'."""
    return event_type.replace("-", ".")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages rounded up to hundredths, as Celery sends them."""
    try:
        return [math.ceil(value * 100) / 100 for value in os.getloadavg()]
    except (OSError, AttributeError):  # not available on this platform
        return [0.0, 0.0, 0.0]


def bounded_repr(value: Any, limit: int = RESULT_REPR_MAX) -> str:
    """A repr that never grows past `limit` characters nor walks a huge structure
    (Celery sends `saferepr(result, 1024)`)."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # a __repr__ that raises must not lose the event
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


@dataclass(frozen=True)
class SoftwareInfo:
    sw_ident: str = "py-amqtask"
    sw_ver: str = __version__
    sw_sys: str = field(default_factory=platform.system)

    def as_fields(self) -> dict[str, str]:
        return {"sw_ident": self.sw_ident, "sw_ver": self.sw_ver, "sw_sys": self.sw_sys}


class CachedOffset:
    """utcoffset() looked up at most once a minute: it only changes when daylight
    saving time starts or ends, and time.localtime() is the costliest part of an event."""

    def __init__(self, offset: Callable[[], float] = utcoffset, clock: Callable[[], float] = time.monotonic,
                 ttl: float = 60.0) -> None:
        self._offset, self._clock, self._ttl = offset, clock, ttl
        self._value = 0.0
        self._expires = float("-inf")

    def __call__(self) -> float:
        now = self._clock()
        if now >= self._expires:
            self._value, self._expires = self._offset(), now + self._ttl
        return self._value


@dataclass(frozen=True)
class EventFactory:
    """Builds the events of one node. Each event forwards the shared clock once."""

    hostname: str
    clock: LamportClock
    pid: int = field(default_factory=os.getpid)
    software: SoftwareInfo = field(default_factory=SoftwareInfo)
    now: Callable[[], float] = time.time
    offset: Callable[[], float] = field(default_factory=CachedOffset)

    def event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Any event: the common fields, then `fields`."""
        fields.update(hostname=self.hostname, utcoffset=self.offset(), pid=self.pid, clock=self.clock.forward(),
                      timestamp=self.now(), type=event_type)
        return fields

    # -- worker events ---------------------------------------------------------------
    def worker(self, event_type: str, *, freq: float, active: int, processed: int,
               loadavg: list[float] | None = None) -> dict[str, Any]:
        """worker-online, worker-heartbeat or worker-offline. `freq` is the heartbeat
        interval in seconds (receivers count a node alive for about 2 x freq after its
        last heartbeat), `active` the tasks running now, `processed` the tasks
        accepted since start."""
        return self.event(event_type, freq=float(freq), active=int(active), processed=int(processed),
                          loadavg=list(load_average() if loadavg is None else loadavg),
                          **self.software.as_fields())

    # -- task events -----------------------------------------------------------------
    def task_received(self, *, uuid: str, name: str, args: str, kwargs: str, root_id: str | None = None,
                      parent_id: str | None = None, retries: int = 0, eta: Any = None,
                      expires: Any = None) -> dict[str, Any]:
        """Sent once a message is decoded and accepted for running. `args` and
        `kwargs` are repr strings (the message's argsrepr/kwargsrepr); `eta` and
        `expires` datetimes or ISO strings."""
        return self.event(TASK_RECEIVED, uuid=uuid, name=name, args=args, kwargs=kwargs, root_id=root_id,
                          parent_id=parent_id, retries=int(retries), eta=_iso(eta), expires=_iso(expires))

    def task_started(self, *, uuid: str) -> dict[str, Any]:
        return self.event(TASK_STARTED, uuid=uuid)

    def task_succeeded(self, *, uuid: str, result: Any, runtime: float | None) -> dict[str, Any]:
        """`result` is the return value (sent as a bounded repr), `runtime` seconds."""
        return self.event(TASK_SUCCEEDED, uuid=uuid, result=bounded_repr(result), runtime=runtime)

    def task_failed(self, *, uuid: str, exception: Any, traceback: str | None) -> dict[str, Any]:
        """`exception` is the exception (or its repr), `traceback` its formatted text."""
        return self.event(TASK_FAILED, uuid=uuid, exception=_exception_repr(exception),
                          traceback=_bounded_text(traceback))

    def task_retried(self, *, uuid: str, exception: Any, traceback: str | None) -> dict[str, Any]:
        return self.event(TASK_RETRIED, uuid=uuid, exception=_exception_repr(exception),
                          traceback=_bounded_text(traceback))

    def task_revoked(self, *, uuid: str, terminated: bool = False, signum: int | None = None,
                     expired: bool = False) -> dict[str, Any]:
        """A revoked or expired task that will not run (or was terminated)."""
        return self.event(TASK_REVOKED, uuid=uuid, terminated=bool(terminated), signum=signum,
                          expired=bool(expired))

    def task_rejected(self, *, uuid: str, requeue: bool) -> dict[str, Any]:
        """A received task the worker gave back (requeue=True) or dead-lettered
        without running it (requeue=False)."""
        return self.event(TASK_REJECTED, uuid=uuid, requeue=bool(requeue))


def _exception_repr(exception: Any) -> str:
    return exception if isinstance(exception, str) else bounded_repr(exception)


def _bounded_text(text: str | None) -> str:
    if not text:
        return ""
    return text if len(text) <= TRACEBACK_MAX else "..." + text[-(TRACEBACK_MAX - 3):]


def is_event(value: Mapping[str, Any]) -> bool:
    """A received body that looks like an event: a mapping with a string type."""
    return isinstance(value, Mapping) and isinstance(value.get("type"), str)
