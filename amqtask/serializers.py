"""Payload encodings (json, msgpack, yaml; pickle only on request) and compression.

Kept apart from the envelope (protocol.py): this module turns Python values into
bytes and back, announcing itself with a MIME content type as kombu does, so
Celery peers recognise it.
"""
from __future__ import annotations

import base64
import bz2
import datetime
import decimal
import json
import pickle
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import msgpack
import yaml

from .errors import ContentDisallowed, SerializationError

# What a message body may grow to once decompressed, unless the codec is told otherwise
# (routing.yaml's broker.max_message_bytes). Checked while decompressing, so a small
# compressed "bomb" never gets the chance to fill memory.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# Nesting deeper than this is refused: decoders recurse, and so does everything that
# later walks the value (repr, result encoding).
MAX_DEPTH = 100


@dataclass(frozen=True)
class Serializer:
    name: str
    content_type: str
    encoding: str  # content_encoding as kombu sends it
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _plain_default(value: Any) -> Any:
    """Types msgpack has no form for, as plain values (kombu's msgpack refuses them)."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not serializable")


def _marked(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _json_default(value: Any) -> Any:
    """Python types JSON has no form for, as kombu (5.3 and later, what Celery 5 uses)
    writes them: `{"__type__": "datetime", "__value__": "<ISO 8601>"}`, so a Celery
    client or worker gets a datetime (date, time, UUID, Decimal, bytes) back, as
    amqtask does (see _kombu_types)."""
    if isinstance(value, datetime.datetime):  # before date: a datetime is a date too
        return _marked("datetime", value.isoformat())
    if isinstance(value, datetime.date):
        return _marked("date", value.isoformat())
    if isinstance(value, datetime.time):
        return _marked("time", value.isoformat())
    if isinstance(value, decimal.Decimal):
        return _marked("decimal", str(value))
    if isinstance(value, uuid.UUID):
        return _marked("uuid", {"hex": value.hex})
    if isinstance(value, (bytes, bytearray)):
        try:
            return _marked("bytes", bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            return _marked("base64", base64.b64encode(value).decode("ascii"))
    return _plain_default(value)


def _uuid(value: Any) -> uuid.UUID:
    return uuid.UUID(**value) if isinstance(value, dict) else uuid.UUID(str(value))


# kombu's type markers and how kombu reads them back.
_MARKED_TYPES: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.datetime.fromisoformat,
    "date": lambda v: datetime.datetime.fromisoformat(v).date(),
    "time": datetime.time.fromisoformat,
    "decimal": decimal.Decimal,
    "uuid": _uuid,
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("ascii")),
}


def _kombu_types(obj: dict[str, Any]) -> Any:
    """A kombu type marker as its value (a malformed one is a decoding error, as in
    kombu); any other object, an unknown marker included, as it is."""
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        kind = obj["__type__"]
        decode = _MARKED_TYPES.get(kind) if isinstance(kind, str) else None
        if decode is not None:
            try:
                return decode(obj["__value__"])
            except (TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"malformed {kind} value {obj['__value__']!r}: {exc}") from None
    return obj


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_JSON = json.JSONDecoder(object_hook=_kombu_types)


def _json_loads(data: bytes | str) -> Any:
    """json.loads, without a decoder made per call and the whitespace scans around
    a body that has none (every message body is decoded here)."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    try:
        value, end = _JSON.raw_decode(text)
    except json.JSONDecodeError:
        return _JSON.decode(text)  # leading whitespace, or the error json.loads would give
    if end != len(text) and text[end:].strip():
        return _JSON.decode(text)  # raises "Extra data", as json.loads
    return value


class _NoAliasLoader(yaml.SafeLoader):  # the C loader composes in C, past this check
    """YAML for message bodies: safe types only, and no anchors or aliases, which a
    hostile sender uses to make a few bytes stand for an enormous structure."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise SerializationError("YAML aliases are not accepted in message bodies")
        return super().compose_node(parent, index)


def _yaml_loads(data: bytes) -> Any:
    return yaml.load(data, Loader=_NoAliasLoader)  # noqa: S506 - a safe loader without aliases


SERIALIZERS: dict[str, Serializer] = {
    "json": Serializer("json", "application/json", "utf-8", _json_dumps, _json_loads),
    "msgpack": Serializer(
        "msgpack", "application/x-msgpack", "binary",
        lambda v: msgpack.packb(v, use_bin_type=True, default=_plain_default),
        lambda b: msgpack.unpackb(b, raw=False, strict_map_key=False),
    ),
    "yaml": Serializer(
        "yaml", "application/x-yaml", "utf-8",
        lambda v: yaml.safe_dump(v).encode("utf-8"),
        _yaml_loads,
    ),
    "pickle": Serializer("pickle", "application/x-python-serialize", "binary", pickle.dumps, pickle.loads),
}
BY_CONTENT_TYPE = {s.content_type: s for s in SERIALIZERS.values()}
# Aliases other clients send for the same formats.
BY_CONTENT_TYPE.update({"application/msgpack": SERIALIZERS["msgpack"], "application/yaml": SERIALIZERS["yaml"],
                        "text/yaml": SERIALIZERS["yaml"], "application/data": SERIALIZERS["json"]})
def _bounded(decompressor: Any, data: bytes, limit: int, name: str) -> bytes:
    """Decompress at most `limit` bytes; more is a SerializationError, found before it
    is produced."""
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit:
        raise SerializationError(f"{name} body expands beyond the {limit}-byte limit")
    return out


def _unzlib(data: bytes, limit: int) -> bytes:
    return _bounded(zlib.decompressobj(), data, limit, "zlib")


def _unbz2(data: bytes, limit: int) -> bytes:
    return _bounded(bz2.BZ2Decompressor(), data, limit, "bzip2")


COMPRESSION = {
    "zlib": ("application/x-gzip", zlib.compress, _unzlib),
    "bzip2": ("application/x-bz2", bz2.compress, _unbz2),
}
COMPRESSION_BY_TYPE = {ctype: (name, dec) for name, (ctype, _, dec) in COMPRESSION.items()}
DEFAULT_ACCEPT = ("json", "msgpack", "yaml")


class Codec:
    """Encodes with a named serializer, decodes only what the accept list allows."""

    def __init__(self, accept: Iterable[str] = DEFAULT_ACCEPT, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.accept = frozenset(accept)
        self.max_bytes = max_bytes

    def encode(self, value: Any, serializer: str = "json", compression: str | None = None) -> tuple[bytes, str, str, str | None]:
        """-> (body, content_type, content_encoding, compression content type or None)."""
        if serializer not in SERIALIZERS:
            raise SerializationError(f"unknown serializer {serializer!r}; use one of {', '.join(SERIALIZERS)}")
        if serializer not in self.accept:
            raise ContentDisallowed(
                f"serializer {serializer!r} is not enabled; add it to broker.accept_content to use it"
            )
        s = SERIALIZERS[serializer]
        try:
            body = s.dumps(value)
        except Exception as exc:  # each library raises its own type
            raise SerializationError(f"cannot encode with {serializer}: {exc}") from exc
        if compression is None:
            return body, s.content_type, s.encoding, None
        if compression not in COMPRESSION:
            raise SerializationError(f"unknown compression {compression!r}; use zlib or bzip2")
        ctype, compress, _ = COMPRESSION[compression]
        return compress(body), s.content_type, s.encoding, ctype

    def decode(self, body: bytes, content_type: str | None, content_encoding: str | None = None,
               compression: str | None = None) -> Any:
        """The value in `body`. Bodies over `max_bytes` (before or after decompression)
        and values nested deeper than MAX_DEPTH are refused with SerializationError."""
        if len(body) > self.max_bytes:
            raise SerializationError(f"body of {len(body)} bytes is over the {self.max_bytes}-byte limit")
        if compression:
            if compression not in COMPRESSION_BY_TYPE:
                raise SerializationError(f"unknown compression {compression!r}")
            try:
                body = COMPRESSION_BY_TYPE[compression][1](body, self.max_bytes)
            except SerializationError:
                raise
            except Exception as exc:
                raise SerializationError(f"cannot decompress ({compression}): {exc}") from exc
        s = BY_CONTENT_TYPE.get((content_type or "").split(";")[0].strip().lower())
        if s is None:
            raise ContentDisallowed(f"unknown content type {content_type!r}")
        if s.name not in self.accept:
            raise ContentDisallowed(f"content type {content_type!r} ({s.name}) is not accepted")
        if content_encoding and s.encoding == "utf-8" and content_encoding.lower().replace("_", "-") not in (
            "utf-8", "utf8", "binary"
        ):
            raise SerializationError(f"unsupported content encoding {content_encoding!r}")
        try:
            value = s.loads(body)
        except SerializationError:
            raise
        except RecursionError:
            raise SerializationError(f"{s.name} body is nested too deeply") from None
        except Exception as exc:
            raise SerializationError(f"cannot decode {s.name} body: {exc}") from exc
        if _could_nest_deeply(body, s.name) and _too_deep(value):
            raise SerializationError(f"{s.name} body is nested deeper than {MAX_DEPTH} levels")
        return value


def _could_nest_deeply(body: bytes, serializer: str) -> bool:
    """Whether a body is large enough to hold MAX_DEPTH nested containers: each
    level takes at least one byte, and in JSON one bracket. (A cheap C-level
    count spares most messages the walk.)"""
    if len(body) <= MAX_DEPTH:
        return False
    if serializer == "json":
        return body.count(b"[") + body.count(b"{") > MAX_DEPTH
    return True


def _too_deep(value: Any) -> bool:
    """Whether containers nest deeper than MAX_DEPTH (iteratively: no recursion to blow).
    Only containers are visited, so flat bodies cost one pass over their top level."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return False
