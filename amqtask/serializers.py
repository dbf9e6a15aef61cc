"""Payload encodings (json, msgpack, yaml; pickle only on request) and compression.

Kept apart from the envelope (protocol.py): this module turns Python values into
bytes and back, announcing itself with a MIME content type as kombu does, so
Celery peers recognise it.
"""
from __future__ import annotations

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


@dataclass(frozen=True)
class Serializer:
    name: str
    content_type: str
    encoding: str  # content_encoding as kombu sends it
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json_loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)


SERIALIZERS: dict[str, Serializer] = {
    "json": Serializer("json", "application/json", "utf-8", _json_dumps, _json_loads),
    "msgpack": Serializer(
        "msgpack", "application/x-msgpack", "binary",
        lambda v: msgpack.packb(v, use_bin_type=True, default=_json_default),
        lambda b: msgpack.unpackb(b, raw=False, strict_map_key=False),
    ),
    "yaml": Serializer(
        "yaml", "application/x-yaml", "utf-8",
        lambda v: yaml.safe_dump(v).encode("utf-8"),
        lambda b: yaml.safe_load(b),
    ),
    "pickle": Serializer("pickle", "application/x-python-serialize", "binary", pickle.dumps, pickle.loads),
}
BY_CONTENT_TYPE = {s.content_type: s for s in SERIALIZERS.values()}
# Aliases other clients send for the same formats.
BY_CONTENT_TYPE.update({"application/msgpack": SERIALIZERS["msgpack"], "application/yaml": SERIALIZERS["yaml"],
                        "text/yaml": SERIALIZERS["yaml"], "application/data": SERIALIZERS["json"]})
COMPRESSION = {
    "zlib": ("application/x-gzip", zlib.compress, zlib.decompress),
    "bzip2": ("application/x-bz2", bz2.compress, bz2.decompress),
}
COMPRESSION_BY_TYPE = {ctype: (name, dec) for name, (ctype, _, dec) in COMPRESSION.items()}
DEFAULT_ACCEPT = ("json", "msgpack", "yaml")


class Codec:
    """Encodes with a named serializer, decodes only what the accept list allows."""

    def __init__(self, accept: Iterable[str] = DEFAULT_ACCEPT) -> None:
        self.accept = frozenset(accept)

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
        if compression:
            if compression not in COMPRESSION_BY_TYPE:
                raise SerializationError(f"unknown compression {compression!r}")
            try:
                body = COMPRESSION_BY_TYPE[compression][1](body)
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
            return s.loads(body)
        except Exception as exc:
            raise SerializationError(f"cannot decode {s.name} body: {exc}") from exc
