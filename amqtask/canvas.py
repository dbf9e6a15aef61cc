"""Canvas, the client side: signatures, chain, group, chord, link and link_error,
sent exactly as Celery 5 sends them.

- A `Signature` travels as Celery's dict: `{"task", "args", "kwargs", "options",
  "subtask_type", "immutable"}` (plus `chord_size` on a chord's body).
- `chain(a, b, c)` (or `a | b | c`) sends `a` with the rest, reversed, in its body's
  `chain`; each follower's task id is fixed in its options.
- `group([...])` sends each task with the `group` and `group_index` headers.
- `chord(header)(body)` sends each header task with `chord` = the body's signature
  (its task id and `group_id` in its options, `chord_size`) and the group headers;
  with Redis the size is also stored where Celery's workers look for it. Chords
  need a result backend that counts: redis:// or db+postgresql://.
- `link` / `link_error` become the body's `callbacks` / `errbacks`.

Running what follows a task (the next chain step, callbacks, errbacks, a chord's
body) is the worker's part; `prepare_signature` turns a signature received in a
message into a message to publish, for the worker and for the client alike.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .errors import AmqtaskError
from .publisher import CallOptions
from .results import AsyncResult, ChordsUnsupported, GroupResult

if TYPE_CHECKING:
    from .app import App
    from .protocol import TaskMessage, WireMessage
    from .publisher import Publisher
    from .router import Destination

CALL_FIELDS = frozenset(CallOptions.__dataclass_fields__) - {"embed", "headers"}
# Options Celery may put in a signature that have no meaning for the message itself.
IGNORED_OPTIONS = frozenset({"add_to_parent", "producer", "retry", "retry_policy", "stamped_headers", "stamps",
                             "connection", "router", "declare", "mandatory", "immediate", "route_name", "publisher",
                             "subtask_type", "chord_size", "replaced_task_nesting"})


class CanvasError(AmqtaskError):
    """A canvas that cannot be sent (or applied) as given."""


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Signature:
    """A task call to be made later: `add.s(2, 3)`, `add.si(2, 3)` (immutable: the
    parent's result is not prepended), `add.s(2).set(queue="q", countdown=5)`."""

    task: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    subtask_type: str | None = None
    immutable: bool = False
    chord_size: int | None = None
    app: "App | None" = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: "App | None" = None) -> "Signature":
        """A signature as Celery puts it in a message (a dict); CanvasError if it is not one."""
        if not isinstance(data, Mapping) or not isinstance(data.get("task"), str) or not data["task"]:
            raise CanvasError(f"not a task signature: {str(data)[:200]}")
        args, kwargs, options = data.get("args") or (), data.get("kwargs") or {}, data.get("options") or {}
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping) or not isinstance(options, Mapping):
            raise CanvasError(f"signature of {data['task']!r} has malformed args, kwargs or options")
        size = data.get("chord_size")
        return cls(data["task"], tuple(args), dict(kwargs), dict(options), data.get("subtask_type"),
                   bool(data.get("immutable")), size if isinstance(size, int) else None, app)

    def to_dict(self) -> dict[str, Any]:
        """Celery's dict shape (JSON-able when args, kwargs and options are)."""
        out: dict[str, Any] = {"task": self.task, "args": list(self.args), "kwargs": dict(self.kwargs),
                               "options": {k: _plain(v) for k, v in self.options.items()},
                               "subtask_type": self.subtask_type, "immutable": self.immutable}
        if self.chord_size is not None:
            out["chord_size"] = self.chord_size
        return out

    def set(self, *, immutable: bool | None = None, **options: Any) -> "Signature":
        """A copy with these options added (queue, countdown, priority, link, ...)."""
        merged = replace(self, options={**self.options, **options})
        return merged if immutable is None else replace(merged, immutable=immutable)

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> "Signature":
        """Celery's partial: args are prepended and kwargs merged, unless immutable."""
        if self.immutable:
            return self.set(**options)
        return replace(self, args=tuple(args) + tuple(self.args), kwargs={**self.kwargs, **(kwargs or {})},
                       options={**self.options, **options})

    def on(self, app: "App") -> "Signature":
        return replace(self, app=app)

    def link(self, callback: "Signature") -> "Signature":
        """A copy that runs `callback` with this task's result after it succeeds."""
        return self.set(link=[*_as_list(self.options.get("link")), callback])

    def link_error(self, errback: "Signature") -> "Signature":
        """A copy that runs `errback` (with the failed task's id) after it fails."""
        return self.set(link_error=[*_as_list(self.options.get("link_error")), errback])

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Send it; `args` are prepended and `options` override the signature's."""
        sig = self.clone(args, kwargs, **options)
        app = _app_of(sig)
        return send(app, sig)

    def __or__(self, other: Any) -> Any:
        return chain(self, other)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here and now (it must be registered on the app)."""
        sig = self.clone(args, kwargs)
        task = _app_of(sig).tasks.get(sig.task)
        if task is None:
            raise CanvasError(f"task {sig.task!r} is not registered in this process")
        return task(*sig.args, **dict(sig.kwargs))


class chain:  # noqa: N801 - Celery's spelling
    """`chain(a.s(1), b.s(), c.s())`: each task's result is the next one's first
    argument (unless it is immutable). `apply_async()` returns the last task's
    AsyncResult; `.parent` leads back through the others."""

    def __init__(self, *tasks: Any, app: "App | None" = None) -> None:
        flat: list[Any] = []
        for task in tasks[0] if len(tasks) == 1 and isinstance(tasks[0], (list, tuple)) else tasks:
            flat.extend(task.tasks if isinstance(task, chain) else [task])
        if not flat:
            raise CanvasError("an empty chain has nothing to run")
        self.tasks = flat
        self.app = app

    def __or__(self, other: Any) -> "chain":
        return chain(self, other, app=self.app)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {"task": "celery.chain", "args": [], "kwargs": {"tasks": [t.to_dict() for t in self.tasks]},
                "options": {}, "subtask_type": "chain", "immutable": False}

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        if isinstance(self.tasks[-1], group) and len(self.tasks) == 1:
            raise CanvasError("a chain of one group: call the group itself")
        if any(isinstance(t, (group, chord)) for t in self.tasks):
            return self._with_chord(args, kwargs, options)
        steps = [_signature(t) for t in self.tasks]
        app = self.app or _app_of(steps[0])
        backend = app.backend
        followers, results = [], []
        for step in steps[1:]:
            frozen = step.set(task_id=step.options.get("task_id") or new_id())
            reply_to = backend.expect(frozen.options["task_id"]) if backend is not None else None
            if reply_to:
                frozen = frozen.set(reply_to=reply_to)
            followers.append(frozen)
        first = steps[0].clone(args, kwargs, **options)
        if followers:
            first = first.set(chain=[f.to_dict() for f in reversed(followers)])
        result = send(app, first)
        results.append(result)
        for step in followers:
            results.append(AsyncResult(step.options["task_id"], step.task, backend=backend, parent=results[-1]))
        return results[-1]

    def _with_chord(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None, options: dict) -> AsyncResult:
        # `group | task` is Celery's chord; anything else nested is refused rather than guessed.
        if len(self.tasks) == 2 and isinstance(self.tasks[0], group) and isinstance(self.tasks[1], Signature):
            return chord(self.tasks[0], self.tasks[1], app=self.app).apply_async(args, kwargs, **options)
        raise CanvasError("a group or chord inside a chain is not supported; write chord(group, body) instead")


class group:  # noqa: N801 - Celery's spelling
    """`group([add.s(1, 1), add.s(2, 2)])`: run the tasks in parallel; `apply_async()`
    returns a GroupResult (get, completed_count, ready, successful, results)."""

    def __init__(self, *tasks: Any, app: "App | None" = None) -> None:
        items = tasks[0] if len(tasks) == 1 and not isinstance(tasks[0], Signature) else tasks
        self.tasks = [_signature(t) for t in items]
        self.app = app

    def __or__(self, other: Any) -> Any:
        if isinstance(other, Signature):
            return chord(self, other, app=self.app)
        raise CanvasError("only a single task signature can follow a group (that is a chord)")

    def __len__(self) -> int:
        return len(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {"task": "celery.group", "args": [], "kwargs": {"tasks": [t.to_dict() for t in self.tasks]},
                "options": {}, "subtask_type": "group", "immutable": False}

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> GroupResult:
        if not self.tasks:
            raise CanvasError("an empty group has nothing to run")
        app = self.app or _app_of(self.tasks[0])
        group_id = options.pop("task_id", None) or new_id()
        results = [send(app, sig.clone(args, kwargs, **options).set(group_id=group_id, group_index=index))
                   for index, sig in enumerate(self.tasks)]
        return GroupResult(group_id, results, backend=app.backend)


class chord:  # noqa: N801 - Celery's spelling
    """`chord(header)(body)`: run the header tasks in parallel, then `body` with the
    list of their results (in header order) as its first argument. If a header task
    fails, the body fails with a ChordError naming it (Celery's behaviour). Needs
    redis:// or db+postgresql://; rpc:// raises ChordsUnsupported here."""

    def __init__(self, header: Any, body: Signature | None = None, *, app: "App | None" = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body
        self.app = app

    def __call__(self, body: Signature | None = None, **options: Any) -> AsyncResult:
        if body is not None:
            self.body = body
        return self.apply_async((), None, **options)

    def to_dict(self) -> dict[str, Any]:
        return {"task": "celery.chord", "args": [], "kwargs": {"kwargs": {}, "header": [
            t.to_dict() for t in self.header.tasks], "body": self.body.to_dict() if self.body else None},
            "options": {}, "subtask_type": "chord", "immutable": False}

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        if self.body is None:
            raise CanvasError("a chord needs a body: chord(header)(body)")
        if not self.header.tasks:
            raise CanvasError("a chord with an empty header has nothing to wait for")
        app = self.app or self.header.app or _app_of(self.body)
        backend = app.backend
        if backend is None or not backend.supports_chords:
            raise ChordsUnsupported("chords need a result backend that counts the header's results: set "
                                    "results.backend to redis://... or db+postgresql://... (rpc:// cannot)")
        group_id = options.pop("task_id", None) or new_id()
        body_id = self.body.options.get("task_id") or new_id()
        size = len(self.header.tasks)
        body = replace(self.body.set(task_id=body_id, group_id=group_id), chord_size=size)
        backend.set_chord_size(group_id, size)
        embedded = body.to_dict()
        results = [send(app, sig.clone(args, kwargs, **options).set(group_id=group_id, group_index=index,
                                                                       chord=embedded))
                   for index, sig in enumerate(self.header.tasks)]
        header = GroupResult(group_id, results, backend=backend)
        return AsyncResult(body_id, body.task, backend=backend, parent=header)


# -- sending -------------------------------------------------------------------------
def send(app: "App", sig: Signature) -> AsyncResult:
    """Publish one signature through the app's publisher; returns its AsyncResult."""
    task = app.tasks.get(sig.task)
    call = call_options(sig.options)
    sent = app.publisher.send(sig.task, sig.args, sig.kwargs, call=call,
                              **({"task_options": task.options} if task is not None else {}))
    return app.result_handle(sent)


def prepare_signature(publisher: "Publisher", data: Mapping[str, Any], *, result: Any = None,
                      prepend: bool = False, parent: "TaskMessage | None" = None,
                      ) -> "tuple[Destination, WireMessage, str]":
    """A signature from a message (a chain step, a callback, an errback, a chord
    body) -> (destination, wire message, task id), ready to publish. With
    `prepend`, `result` becomes the first argument unless the signature is
    immutable. `parent` sets root_id and parent_id. A Celery chain signature
    (`celery.chain`) is sent as its first task carrying the rest. Use a Publisher
    without results: the reply_to a follower needs is in its options already.
    Raises CanvasError for anything that is not one task or one chain."""
    sig = _decoded(data)
    if sig.subtask_type == "chain" or sig.task == "celery.chain":
        sig = _chain_head(sig)
    elif sig.subtask_type in ("group", "chord") or sig.task in ("celery.group", "celery.chord"):
        raise CanvasError(f"a {sig.subtask_type or sig.task} signature cannot be applied as a single message")
    if prepend and not sig.immutable:
        sig = replace(sig, args=(result, *sig.args))
    options = dict(sig.options)
    if parent is not None:
        options.setdefault("root_id", parent.root_id or parent.id)
        options["parent_id"] = parent.id
    return publisher.prepare(sig.task, sig.args, sig.kwargs, call=call_options(options))


def _decoded(data: Any) -> Signature:
    return data if isinstance(data, Signature) else Signature.from_dict(data)


def _chain_head(sig: Signature) -> Signature:
    tasks = sig.kwargs.get("tasks") if isinstance(sig.kwargs, Mapping) else None
    if not isinstance(tasks, (list, tuple)) or not tasks:
        raise CanvasError("a chain signature without tasks")
    steps = [_decoded(t) for t in tasks]
    head = steps[0].clone(sig.args, sig.kwargs.get("kwargs") if isinstance(sig.kwargs.get("kwargs"), Mapping)
                          else None)
    if len(steps) > 1:
        head = head.set(chain=[s.to_dict() for s in reversed(steps[1:])])
    return head


def call_options(options: Mapping[str, Any]) -> CallOptions:
    """Celery's apply_async/signature options -> CallOptions: group_id and
    group_index become headers, link/link_error/chain/chord the body's embed,
    eta/expires may be ISO text (as they come in a message). Unknown options are
    ignored, as Celery ignores them."""
    fields: dict[str, Any] = {}
    headers: dict[str, Any] = dict(options.get("headers") or {})
    embed: dict[str, Any] = {}
    for key, value in options.items():
        if value is None or key in IGNORED_OPTIONS or key == "headers":
            continue
        if key == "group_id":
            headers["group"] = str(value)
        elif key == "group_index":
            headers["group_index"] = int(value)
        elif key == "shadow":
            headers["shadow"] = str(value)
        elif key in ("link", "link_error"):
            embed["callbacks" if key == "link" else "errbacks"] = [_decoded(s).to_dict() for s in _as_list(value)]
        elif key == "chain":
            embed["chain"] = [_decoded(s).to_dict() for s in _as_list(value)]
        elif key == "chord":
            embed["chord"] = _decoded(value).to_dict()
        elif key in ("eta", "expires") and isinstance(value, str):
            fields[key] = _parse_time(key, value)
        elif key in ("queue", "exchange") and not isinstance(value, str):
            continue  # kombu Queue/Exchange objects: routing comes from routing.yaml instead
        elif key in CALL_FIELDS:
            fields[key] = value
    if headers:
        fields["headers"] = headers
    if embed:
        fields["embed"] = embed
    return CallOptions(**fields)


def _parse_time(key: str, text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CanvasError(f"option {key!r} is not an ISO 8601 time: {text[:64]!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (Signature, Mapping)):
        return [value]
    return list(value)


def _plain(value: Any) -> Any:
    """Option values as they travel: nested signatures as dicts."""
    if isinstance(value, (Signature, chain, group, chord)):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _signature(value: Any) -> Signature:
    if isinstance(value, Signature):
        return value
    if isinstance(value, Mapping):
        return Signature.from_dict(value)
    raise CanvasError(f"expected a task signature (task.s(...)), not {type(value).__name__}")


def _app_of(sig: Signature) -> "App":
    if sig.app is None:
        raise CanvasError(f"signature of {sig.task!r} has no app: build it with task.s(...) or "
                          "app.signature(name, ...)")
    return sig.app


def signatures(items: Iterable[Any]) -> list[Signature]:
    return [_signature(i) for i in items]
