"""Signals with Celery's names and arguments: connect a receiver, it is called with
`signal=`, `sender=` and the signal's keyword arguments.

    from amqtask.signals import task_failure

    @task_failure.connect
    def alert(sender=None, task_id=None, exception=None, **kwargs):
        ...

    @task_prerun.connect(sender=add)          # only for one task (or sender="proj.add")
    def before_add(**kwargs): ...

As in Celery, receivers are held by weak reference unless `weak=False` (a receiver
defined inside a function disappears with it), a receiver must accept **kwargs, and
an exception in a receiver is logged and returned from `send`, never raised into the
sender. The signals are process-wide, as Celery's are: that is what a signal is for.

Who sends what:
- before_task_publish(sender=task name, body, exchange, routing_key, headers,
  properties, declare, retry_policy) and after_task_publish(sender=task name, body,
  exchange, routing_key, headers): the publisher, around each publish. A
  before_task_publish receiver may change `headers` (add a tracing header, say).
- task_prerun(sender=task, task_id, task, args, kwargs), task_postrun(... retval,
  state), task_success(sender=task, result, runtime), task_failure(sender=task,
  task_id, exception, args, kwargs, traceback, einfo), task_retry(sender=task,
  request, reason, einfo): around each run of a task (see amqtask.lifecycle).
- worker_process_init, worker_ready, worker_shutdown: the worker.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from .protocol import WireMessage
    from .router import Destination

log = logging.getLogger("amqtask.signals")
Receiver = Callable[..., Any]


def _sender_key(sender: Any) -> Any:
    """Strings (task names) compare by value; any other sender by identity."""
    if sender is None or isinstance(sender, str):
        return sender
    name = getattr(sender, "_shared_name", None)  # a shared task proxy stands for its name
    return name if name is not None else id(sender)


def _receiver_key(receiver: Receiver) -> Any:
    if inspect.ismethod(receiver):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)


class Signal:
    """A named event; receivers are called in the order they connected."""

    def __init__(self, name: str, providing_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.providing_args = providing_args
        self._lock = threading.Lock()
        # (dispatch key, sender key, receiver or weak reference, is_weak)
        self._receivers: list[tuple[Any, Any, Any, bool]] = []

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"

    def connect(self, receiver: Receiver | None = None, *, sender: Any = None, weak: bool = True,
                dispatch_uid: Any = None) -> Any:
        """Connect `receiver`; usable as `@sig.connect` or `@sig.connect(sender=...)`.
        Connecting the same receiver (or dispatch_uid) for the same sender twice
        keeps one."""
        if receiver is None:
            return lambda fn: self.connect(fn, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        if not callable(receiver):
            raise TypeError(f"signal receivers must be callable, not {type(receiver).__name__}")
        if not _accepts_kwargs(receiver):
            raise ValueError(f"signal receiver {receiver!r} must accept keyword arguments (**kwargs)")
        key = (dispatch_uid if dispatch_uid is not None else _receiver_key(receiver), _sender_key(sender))
        if weak:
            ref = weakref.WeakMethod(receiver) if inspect.ismethod(receiver) else weakref.ref(receiver)
            entry = (key[0], key[1], ref, True)
        else:
            entry = (key[0], key[1], receiver, False)
        with self._lock:
            # Dead entries go first: a new function may reuse a collected one's id.
            self._receivers = [r for r in self._receivers if not r[3] or r[2]() is not None]
            if not any(r[0] == key[0] and r[1] == key[1] for r in self._receivers):
                self._receivers.append(entry)
        return receiver

    def disconnect(self, receiver: Receiver | None = None, *, sender: Any = None, dispatch_uid: Any = None) -> bool:
        """Remove a receiver; True when one was connected."""
        if receiver is None and dispatch_uid is None:
            raise TypeError("disconnect needs the receiver or its dispatch_uid")
        key = (dispatch_uid if dispatch_uid is not None else _receiver_key(receiver), _sender_key(sender))
        with self._lock:
            for i, r in enumerate(self._receivers):
                if (r[0], r[1]) == key:
                    del self._receivers[i]
                    return True
        return False

    @property
    def receivers(self) -> list[Receiver]:
        """The live receivers (any sender)."""
        return self._live(None, any_sender=True)

    def has_listeners(self, sender: Any = None) -> bool:
        return bool(self._receivers) and bool(self._live(sender))

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver for `sender`: [(receiver, its return value or its exception)]."""
        if not self._receivers:
            return []
        responses = []
        for receiver in self._live(sender):
            try:
                responses.append((receiver, receiver(signal=self, sender=sender, **named)))
            except Exception as exc:  # a receiver's failure must never break the task or publish
                log.exception("signal %s: receiver %r raised %r", self.name, receiver, exc)
                responses.append((receiver, exc))
        return responses

    send_robust = send  # Celery's (and Django's) other name for the same thing

    def _live(self, sender: Any, any_sender: bool = False) -> list[Receiver]:
        wanted = _sender_key(sender)
        alive, dead = [], False
        with self._lock:
            entries = list(self._receivers)
        for _, sender_key, held, is_weak in entries:
            receiver = held() if is_weak else held
            if receiver is None:
                dead = True
            elif any_sender or sender_key is None or sender_key == wanted or _named(sender_key, sender):
                alive.append(receiver)
        if dead:
            with self._lock:
                self._receivers = [r for r in self._receivers if not r[3] or r[2]() is not None]
        return alive


def _named(sender_key: Any, sender: Any) -> bool:
    """A receiver connected with a task's name also hears that task object."""
    return isinstance(sender_key, str) and getattr(sender, "name", None) == sender_key


def _accepts_kwargs(receiver: Receiver) -> bool:
    try:
        parameters = inspect.signature(receiver).parameters.values()
    except (TypeError, ValueError):
        return True  # a builtin or C callable: nothing to check
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


before_task_publish = Signal("before_task_publish", ("body", "exchange", "routing_key", "headers", "properties",
                                                     "declare", "retry_policy"))
after_task_publish = Signal("after_task_publish", ("body", "exchange", "routing_key", "headers"))
task_prerun = Signal("task_prerun", ("task_id", "task", "args", "kwargs"))
task_postrun = Signal("task_postrun", ("task_id", "task", "args", "kwargs", "retval", "state"))
task_success = Signal("task_success", ("result", "runtime"))
task_failure = Signal("task_failure", ("task_id", "exception", "args", "kwargs", "traceback", "einfo"))
task_retry = Signal("task_retry", ("request", "reason", "einfo"))
worker_process_init = Signal("worker_process_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")


# -- the publisher's side ---------------------------------------------------------------

def _body(args: Any, kwargs: Mapping[str, Any] | None) -> tuple:
    from .protocol import EMBED_KEYS

    return (tuple(args), dict(kwargs or {}), dict.fromkeys(EMBED_KEYS))


def _properties(wire: "WireMessage") -> dict[str, Any]:
    return {"correlation_id": wire.correlation_id, "reply_to": wire.reply_to, "priority": wire.priority,
            "content_type": wire.content_type, "content_encoding": wire.content_encoding,
            "delivery_mode": wire.delivery_mode}


def before_publish(task_name: str, args: Any, kwargs: Mapping[str, Any] | None, destination: "Destination",
                   wire: "WireMessage", *, retries: int = 0) -> "WireMessage":
    """Send before_task_publish; returns the message with any headers receivers changed."""
    if not before_task_publish.has_listeners(task_name):
        return wire
    headers = dict(wire.headers)
    before_task_publish.send(sender=task_name, body=_body(args, kwargs), exchange=destination.exchange,
                             routing_key=destination.routing_key, headers=headers, properties=_properties(wire),
                             declare=[], retry_policy={"max_retries": retries})
    return wire if headers == dict(wire.headers) else dataclasses.replace(wire, headers=headers)


def after_publish(task_name: str, args: Any, kwargs: Mapping[str, Any] | None, destination: "Destination",
                  wire: "WireMessage") -> None:
    """Send after_task_publish once the broker has confirmed the message."""
    if after_task_publish.has_listeners(task_name):
        after_task_publish.send(sender=task_name, body=_body(args, kwargs), exchange=destination.exchange,
                                routing_key=destination.routing_key, headers=dict(wire.headers))


__all__ = [
    "Signal", "before_task_publish", "after_task_publish", "task_prerun", "task_postrun", "task_success",
    "task_failure", "task_retry", "worker_process_init", "worker_ready", "worker_shutdown",
]
