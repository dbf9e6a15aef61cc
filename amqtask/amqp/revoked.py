"""Revocations that outlive a worker: kept in a RabbitMQ stream.

Why a stream and not a `--statedb` file: a revocation must reach the worker that
will receive the task, which after a restart may run on another host or in a new
container with an empty disk. A stream (RabbitMQ 3.9+) is read from its start by
any number of consumers without removing anything, so every worker that starts
reads every revocation of the last 3 hours, and `amqtask control revoke` records
one even when no worker is running. Retention: 3 hours (Celery's REVOKE_EXPIRES)
and 50 MB, in 1 MB segments so old entries actually go.

Each entry is one JSON message {"ids": [...], "at": epoch seconds, "by": node},
with at most ENTRY_IDS_MAX ids (more are written as several entries). Entries from
anyone who can publish are read defensively: anything malformed is skipped, ids
are capped in number (ENTRY_IDS_MAX) and length.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Sequence

import aiormq
import aiormq.abc
import aiormq.channel
import aiormq.connection
import pika
import pika.exceptions as px
from pamqp import commands as spec
from pika.adapters.blocking_connection import BlockingChannel

from ..control.revoked import REVOKE_EXPIRES, RevokedSet, valid_task_ids
from ..brokerurl import BrokerURL
from ..errors import BrokerError
from ..settings import BrokerSettings
from .connection import open_connection

log = logging.getLogger("amqtask.control")

STREAM_ARGUMENTS = {
    "x-queue-type": "stream",
    "x-max-age": f"{int(REVOKE_EXPIRES)}s",
    "x-max-length-bytes": 50_000_000,
    "x-stream-max-segment-size-bytes": 1_000_000,
}
LOAD_TIMEOUT = 10.0
ENTRY_IDS_MAX = 1000  # ids per entry: the reader takes no more from one
_MARKER = "marker"


def declare_stream(channel: BlockingChannel, name: str) -> None:
    """Make sure the stream exists. One that exists already is used as it is,
    whatever its arguments (an operator may have tuned its retention)."""
    connection = channel.connection
    try:
        probe = connection.channel()
        probe.queue_declare(name, passive=True)
        probe.close()
        return
    except px.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
    channel.queue_declare(name, durable=True, arguments=STREAM_ARGUMENTS)


def entries(ids: Sequence[str], *, by: str, at: float | None = None) -> list[bytes]:
    """The stream entries recording `ids` as revoked at `at` (default now), each
    with at most ENTRY_IDS_MAX ids, so that the reader takes every one."""
    stamp = time.time() if at is None else at
    ids = list(ids)
    return [json.dumps({"ids": ids[start:start + ENTRY_IDS_MAX], "at": stamp, "by": by}).encode()
            for start in range(0, len(ids), ENTRY_IDS_MAX)]


def append(channel: BlockingChannel, name: str, ids: Sequence[str], *, by: str) -> None:
    """Record `ids` as revoked now (persistent, unconfirmed: the caller's thread
    must not wait on the broker; a revocation also lives in every running worker)."""
    for body in entries(ids, by=by):
        channel.basic_publish("", name, body, pika.BasicProperties(content_type="application/json", delivery_mode=2))


async def load(broker: BrokerSettings, name: str, into: RevokedSet, *, timeout: float = LOAD_TIMEOUT,
               after: BrokerURL | None = None) -> int:
    """Read the whole stream into `into`; returns how many ids were added.

    A stream does not say how long it is, so a marker is appended first (confirmed)
    and the stream is read from its first entry until the marker comes back: every
    revocation recorded before this call is then read, whatever the timing.

    Read with aiormq, which drops deliveries that arrive after the reader stops.
    pika rejects them instead, and a stream answers a reject by closing the
    connection (540 NOT_IMPLEMENTED); several workers starting at once append
    entries behind each other's markers, so a reader often has some in flight."""
    connection = await open_connection(broker, "amqtask revoked", after=after)
    try:
        writer = await connection.channel()
        await _declare_stream(connection, writer, name)
        marker = uuid.uuid4().hex
        await writer.basic_publish(json.dumps({_MARKER: marker}).encode(), routing_key=name,
                                   properties=spec.Basic.Properties(content_type="application/json",
                                                                    delivery_mode=2))
        reader = await connection.channel()
        await reader.basic_qos(prefetch_count=500)  # a stream consumer must have a prefetch
        reached = asyncio.Event()
        added = 0

        def take(body: bytes) -> None:
            nonlocal added
            parsed = _parse(body)
            if parsed is None:
                return
            if parsed.get(_MARKER) == marker:
                reached.set()
                return
            at = parsed.get("at")
            ids = valid_task_ids(parsed.get("ids"), limit=ENTRY_IDS_MAX)
            if isinstance(at, (int, float)) and not isinstance(at, bool) and ids:
                added += len(into.add(ids, at=float(at)))

        async def on_entry(message: aiormq.abc.DeliveredMessage) -> None:
            if reached.is_set():
                return
            take(message.body)  # before the first await: entries are taken in stream order
            await reader.basic_ack(message.delivery_tag)  # a stream's credit for the next entries

        await reader.basic_consume(name, on_entry, arguments={"x-stream-offset": "first"})
        try:
            await asyncio.wait_for(reached.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("revoked ids: read %s from stream %s but did not reach its end within %gs",
                        added, name, timeout)
        return added
    finally:
        await connection.close()  # no cancel: nothing is rejected, the stream keeps its entries


async def _declare_stream(connection: aiormq.abc.AbstractConnection, channel: aiormq.abc.AbstractChannel,
                          name: str) -> None:
    """declare_stream on aiormq: an existing stream is used as it is."""
    probe = await connection.channel()
    try:
        await probe.queue_declare(name, passive=True)
        await probe.close()
        return
    except aiormq.exceptions.ChannelNotFoundEntity:
        pass
    await channel.queue_declare(name, durable=True, arguments=STREAM_ARGUMENTS)


# aiormq raises a class per reply code and keeps only the text for most of them
_CODES = {kind: code for mapping in (aiormq.channel.EXCEPTION_MAPPING, aiormq.connection.EXCEPTION_MAPPING)
          for code, kind in mapping.items()}


def _reply(exc: BaseException) -> tuple[int | None, str]:
    """(reply code, reply text) of a channel or connection closed by the broker."""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return _CODES.get(type(exc)), str(args[0] if args else exc)


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


STREAM_ATTEMPTS = 12  # about 30 s in all (a pause of 0.4 s more after each attempt)


def transient(exc: BaseException) -> bool:
    """Whether reading the stream may succeed if tried again in a moment.

    506 "Stream not found" (on the channel, or closing the connection): another
    worker declared it a moment ago and it is still coming up (several processes
    start at once). 406 "does not have a replica on the
    local node": in a cluster, this node's replica is not running (the node just
    restarted); another node, or a moment, serves. 541 INTERNAL_ERROR: on a node that
    has just booted, the first streams declared at once can fail while the stream
    coordinator starts (it closes the connection; the next attempt opens a new one).
    Anything else (access refused, a queue of that name that is not a stream) is final."""
    code, text = _reply(exc)
    return code in (506, 541) or (code == 406 and "replica" in text)


class RevokedStore:
    """The revoked set a worker honours, loaded from the stream at start.

    The worker asks `task_id in store.revoked` when a task arrives and again before
    it runs; the control node adds revocations and appends them to the stream."""

    def __init__(self, revoked: RevokedSet, stream: str | None) -> None:
        self.revoked = revoked
        self.stream = stream

    @classmethod
    def open(cls, broker: BrokerSettings, stream: str | None, *, name: str = "amqtask revoked") -> "RevokedStore":
        """Load the stream's revocations (none when `stream` is None: memory only)."""
        revoked = RevokedSet()
        if stream is None:
            return cls(revoked, None)
        added = asyncio.run(cls._load(broker, stream, revoked))
        if added:
            log.info("%s revoked task ids loaded from %s", added, stream)
        return cls(revoked, stream)

    @staticmethod
    async def _load(broker: BrokerSettings, stream: str, into: RevokedSet) -> int:
        after: BrokerURL | None = None
        for attempt in range(STREAM_ATTEMPTS):
            try:
                return await load(broker, stream, into, after=after)
            except (aiormq.exceptions.AMQPChannelError, aiormq.exceptions.ConnectionClosed) as exc:
                if not transient(exc) or attempt == STREAM_ATTEMPTS - 1:
                    raise BrokerError(f"cannot read revoked ids from stream {stream!r}: {_reply(exc)[1]}") from None
                log.info("revoked ids: stream %s not readable yet (%s); trying again", stream, _reply(exc)[1])
                after = broker.urls[attempt % len(broker.urls)]  # begin with the next node of a cluster
                await asyncio.sleep(0.4 * (attempt + 1))
        raise AssertionError("unreachable")

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.revoked
