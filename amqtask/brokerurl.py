"""Broker URLs as Celery users write them, parsed without touching the network.

Accepted: `amqp://`, `amqps://`, and Celery's aliases `pyamqp://` and
`librabbitmq://`; `//` or `%2F` for the default vhost `/`; several URLs joined by
`;` for failover, tried in order. Passwords never leave this module unredacted
except through `BrokerURL.password`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .errors import AmqtaskError

SCHEMES = {"amqp": False, "pyamqp": False, "librabbitmq": False, "amqps": True}


class BrokerURLError(AmqtaskError):
    """A broker URL is malformed; the message never contains the password."""


@dataclass(frozen=True)
class BrokerURL:
    host: str = "127.0.0.1"
    port: int = 5672
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    tls: bool = False
    query: Mapping[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL for logs and banners: the password is replaced by `***`."""
        scheme = "amqps" if self.tls else "amqp"
        user = quote(self.username, safe="")
        vhost = quote(self.vhost, safe="")
        return f"{scheme}://{user}:***@{self.host}:{self.port}/{vhost}"

    def __str__(self) -> str:
        return self.redacted()


def parse_broker_urls(text: str) -> tuple[BrokerURL, ...]:
    """Parse one URL or several separated by `;` (failover order)."""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts:
        raise BrokerURLError("the broker URL is empty")
    return tuple(parse_broker_url(p) for p in parts)


def parse_broker_url(text: str) -> BrokerURL:
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise BrokerURLError(f"broker URL {redact_url(text)!r} has no scheme; expected amqp:// or amqps://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise BrokerURLError(
            f"unsupported broker URL scheme {scheme!r}; use one of {', '.join(sorted(SCHEMES))}"
        )
    tls = SCHEMES[scheme]
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise BrokerURLError(f"broker URL {redact_url(text)!r} is malformed: {exc}") from None
    # '//' (Celery's habit) and '/%2F' both name the default vhost '/'; a bare host too.
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) if path else "/"
    return BrokerURL(
        host=parts.hostname or "127.0.0.1",
        port=port or (5671 if tls else 5672),
        username=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost=vhost,
        tls=tls,
        query=dict(parse_qsl(parts.query)),
    )


def redact_url(text: str) -> str:
    """Hide the password of every URL in `text` (which may hold several, `;`-joined)."""
    out = []
    for part in text.split(";"):
        scheme, sep, rest = part.partition("://")
        if sep and "@" in rest:
            creds, _, host = rest.rpartition("@")
            user = creds.split(":", 1)[0]
            part = f"{scheme}://{user}:***@{host}" if ":" in creds else part
        out.append(part)
    return ";".join(out)
