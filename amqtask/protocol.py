"""Celery's task message protocol v2: TaskMessage <-> (body, AMQP properties, headers).

The shape follows what Celery 5 really emits (celery/app/amqp.py, as_task_v2):
the task's metadata travels in headers, the body is `[args, kwargs, embed]`, and
`timelimit` is `[hard, soft]`. docs/protocol.md describes it for other languages.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import os
from importlib import resources
import reprlib
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ProtocolError, SerializationError
from .serializers import Codec

EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")
_repr = reprlib.Repr()
_repr.maxstring = 256
_repr.maxother = 256
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 32
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
# Bounds on what a message may ask of a worker. A value outside them is a malformed
# message (dead-lettered with the reason), never something a worker tries to honour.
MAX_RETRIES_HEADER = 1_000_000
MAX_TIME_LIMIT = 366 * 86400.0
MAX_ETA_AHEAD = dt.timedelta(days=366)


def load_schema(name: str = "task-message") -> dict[str, Any]:
    """The JSON Schema shipped with amqtask: "task-message" or "result-message"."""
    text = resources.files("amqtask.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def new_task_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class TaskMessage:
    """A task invocation, independent of how it travels."""

    task: str
    id: str = field(default_factory=new_task_id)
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    embed: Mapping[str, Any] = field(default_factory=lambda: dict.fromkeys(EMBED_KEYS))
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    retries: int = 0
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    shadow: str | None = None
    origin: str | None = None
    lang: str = "py"
    reply_to: str | None = None
    priority: int | None = None
    extra_headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WireMessage:
    """What goes to (or came from) the broker: body bytes, AMQP properties, headers."""

    body: bytes
    headers: Mapping[str, Any]
    content_type: str
    content_encoding: str
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None
    delivery_mode: int = 2


def encode_task(message: TaskMessage, codec: Codec, *, serializer: str = "json", compression: str | None = None,
                persistent: bool = True) -> WireMessage:
    headers: dict[str, Any] = {
        "lang": message.lang,
        "task": message.task,
        "id": message.id,
        "shadow": message.shadow,
        "eta": _iso(message.eta),
        "expires": _iso(message.expires),
        "group": message.group,
        "group_index": message.group_index,
        "retries": message.retries,
        "timelimit": [message.time_limit, message.soft_time_limit],
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
        "argsrepr": _short_repr(tuple(message.args)),
        "kwargsrepr": _short_repr(dict(message.kwargs)),
        "origin": message.origin or _ORIGIN,
        "ignore_result": message.ignore_result,
    }
    body_value = [list(message.args), dict(message.kwargs), {k: message.embed.get(k) for k in EMBED_KEYS}]
    body, content_type, encoding, compressed = codec.encode(body_value, serializer, compression)
    if compressed:
        headers["compression"] = compressed
    headers.update(message.extra_headers)
    return WireMessage(
        body=body,
        headers=headers,
        content_type=content_type,
        content_encoding=encoding,
        correlation_id=message.id,
        reply_to=message.reply_to,
        priority=message.priority,
        delivery_mode=2 if persistent else 1,
    )


def decode_task(wire: WireMessage, codec: Codec) -> TaskMessage:
    """Parse a v2 task message; ProtocolError or SerializationError says what is wrong."""
    headers = wire.headers
    if type(headers) is not dict and not isinstance(headers, Mapping):  # the exact type first: ABC checks are slow
        raise ProtocolError("message has no headers table; a v2 task message carries its metadata in headers")
    task = headers.get("task")
    if not isinstance(task, str) or not task:
        raise ProtocolError("missing or invalid 'task' header (a v2 message is known by it)")
    task_id = headers.get("id") or wire.correlation_id
    if not isinstance(task_id, str) or not task_id:
        raise ProtocolError("missing or invalid 'id' header")
    if len(task_id.encode()) > 255:  # it travels back as a correlation_id, an AMQP short string
        raise ProtocolError("header 'id' is longer than 255 bytes")
    body = codec.decode(wire.body, wire.content_type, wire.content_encoding, _opt_str(headers, "compression"))
    if not isinstance(body, (list, tuple)) or len(body) not in (2, 3):
        raise ProtocolError("body must be [args, kwargs, embed]")
    args, kwargs = body[0], body[1]
    embed = body[2] if len(body) == 3 else {}
    if not isinstance(args, (list, tuple)):
        raise ProtocolError("body[0] (args) must be a list")
    if (type(kwargs) is not dict and not isinstance(kwargs, Mapping)) or not all(isinstance(k, str) for k in kwargs):
        raise ProtocolError("body[1] (kwargs) must be an object with string keys")
    if embed is None:
        embed = {}
    if type(embed) is not dict and not isinstance(embed, Mapping):
        raise ProtocolError("body[2] (embed) must be an object")
    for key in ("callbacks", "errbacks", "chain"):
        if embed.get(key) is not None and not isinstance(embed[key], (list, tuple)):
            raise ProtocolError(f"body[2] (embed) '{key}' must be a list of signatures or null")
    if embed.get("chord") is not None and not isinstance(embed["chord"], Mapping):
        raise ProtocolError("body[2] (embed) 'chord' must be a signature object or null")
    hard, soft = _timelimit(headers.get("timelimit"))
    retries = _opt_int(headers, "retries") or 0
    if not 0 <= retries <= MAX_RETRIES_HEADER:
        raise ProtocolError(f"header 'retries' must be between 0 and {MAX_RETRIES_HEADER}, not {retries}")
    eta = _parse_time(headers, "eta")
    if eta is not None and eta - utcnow() > MAX_ETA_AHEAD:
        raise ProtocolError(f"header 'eta' is more than {MAX_ETA_AHEAD.days} days ahead: {eta.isoformat()}")
    return TaskMessage(
        task=task,
        id=task_id,
        args=tuple(args),
        kwargs=dict(kwargs),
        embed={k: embed.get(k) for k in EMBED_KEYS},
        root_id=_opt_str(headers, "root_id"),
        parent_id=_opt_str(headers, "parent_id"),
        group=_opt_str(headers, "group"),
        group_index=_opt_int(headers, "group_index"),
        retries=retries,
        eta=eta,
        expires=_parse_time(headers, "expires"),
        time_limit=hard,
        soft_time_limit=soft,
        ignore_result=bool(headers.get("ignore_result", False)),
        shadow=_opt_str(headers, "shadow"),
        origin=_opt_str(headers, "origin"),
        lang=_opt_str(headers, "lang") or "py",
        reply_to=wire.reply_to or None,
        priority=wire.priority,
        extra_headers={k: v for k, v in headers.items() if k not in _KNOWN_HEADERS},
    )


_KNOWN_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit", "root_id",
    "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "compression",
})


def _short_repr(value: tuple | dict) -> str:
    """reprlib's bounded repr, which Celery also sends. reprlib is slow on the publish
    path, so the common cases take plain repr, which gives the same text for them: no
    kwargs, and args that are all short scalars (reprlib sorts dict keys, so dicts with
    items always go through it)."""
    if not value:
        return repr(value)
    if isinstance(value, tuple) and len(value) <= _repr.maxtuple and all(_is_short_scalar(v) for v in value):
        return repr(value)
    return _repr.repr(value)


def _is_short_scalar(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= _repr.maxstring and len(repr(value)) <= _repr.maxstring
    if kind is int:
        return -10**30 < value < 10**30  # reprlib shortens longer ints
    return kind is float or kind is bool or value is None


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat()


def _opt_str(headers: Mapping[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise ProtocolError(f"header {key!r} must be a string, not {type(value).__name__}")
    return value


def _opt_int(headers: Mapping[str, Any], key: str) -> int | None:
    value = headers.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"header {key!r} must be an integer, not {type(value).__name__}")
    return value


def _parse_time(headers: Mapping[str, Any], key: str) -> dt.datetime | None:
    text = _opt_str(headers, key)
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError(f"header {key!r} is not an ISO 8601 time: {text[:64]!r}") from None
    # Protocol v2 times without an offset are UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ProtocolError("header 'timelimit' must be [hard, soft]")
    out = []
    for item in value:
        if item is not None and (isinstance(item, bool) or not isinstance(item, (int, float, decimal.Decimal))):
            raise ProtocolError("header 'timelimit' must hold numbers or null")
        if item is None:
            out.append(None)
            continue
        seconds = float(item)
        if not 0 <= seconds <= MAX_TIME_LIMIT:  # also refuses NaN and infinities
            raise ProtocolError(f"header 'timelimit' values must be seconds between 0 and {MAX_TIME_LIMIT:g}, "
                                f"not {item!r}")
        out.append(seconds or None)  # 0 means no limit, as Celery reads it
    return out[0], out[1]


__all__ = ["TaskMessage", "WireMessage", "encode_task", "decode_task", "new_task_id", "utcnow",
           "SerializationError"]
