"""The revoked stream read by workers at start (amqtask/amqp/revoked.py), on the real
broker: several workers starting at once each append a marker and read to it, so
one reader meets entries written after its own marker."""
from __future__ import annotations

import uuid

from amqtask.amqp import revoked
from amqtask.brokerurl import parse_broker_urls
from amqtask.settings import BrokerSettings


def test_entries_after_the_marker_do_not_fail_the_read(broker_url, amqp, prefix, monkeypatch):
    stream = f"{prefix}.revoked"
    amqp.track("queue", stream)
    revoked.declare_stream(amqp, stream)
    revoked.append(amqp, stream, ["before-1", "before-2"], by="test")
    # This reader's marker also stands early in the stream, followed by many entries
    # (as another starting worker's would be): the reader reaches it with a prefetch
    # window of later entries in flight, which it must not reject (a stream answers a
    # reject by closing the connection). pika's cancel rejected them; 1 read in 20 failed.
    marker = uuid.UUID(int=1)
    monkeypatch.setattr(revoked.uuid, "uuid4", lambda: marker)
    amqp.basic_publish("", stream, b'{"marker": "%s"}' % marker.hex.encode())
    for n in range(3000):
        revoked.append(amqp, stream, [f"after-{n}"], by="test")

    broker = BrokerSettings(urls=parse_broker_urls(broker_url))
    for _ in range(20):
        store = revoked.RevokedStore.open(broker, stream)
        assert "before-1" in store and "before-2" in store
        assert "after-0" not in store  # read up to this reader's marker, not beyond


def test_revocations_are_read_in_order_up_to_the_marker(broker_url, amqp, prefix):
    stream = f"{prefix}.revoked"
    amqp.track("queue", stream)
    revoked.declare_stream(amqp, stream)
    ids = [f"id-{n}" for n in range(1200)]
    for chunk in range(0, len(ids), 3):
        revoked.append(amqp, stream, ids[chunk:chunk + 3], by="test")
    amqp.basic_publish("", stream, b"not json")
    amqp.basic_publish("", stream, b'{"ids": "not a list", "at": 1}')
    store = revoked.RevokedStore.open(BrokerSettings(urls=parse_broker_urls(broker_url)), stream)
    assert all(i in store for i in ids)
    assert len(store.revoked) == len(ids)


def test_workers_starting_at_once_all_read_a_stream_none_has_declared_yet(broker_url, amqp, prefix):
    """Eight readers declare the same new stream at once: those that find it still
    coming up (506 closing the connection; on a node that has just booted, 541 while
    the stream coordinator starts) try again instead of failing the worker's start."""
    import asyncio

    from amqtask.control.revoked import RevokedSet

    stream = f"{prefix}.revoked"
    amqp.track("queue", stream)
    broker = BrokerSettings(urls=parse_broker_urls(broker_url))
    sets = [RevokedSet() for _ in range(8)]

    async def start_all() -> list:
        return await asyncio.gather(*(revoked.RevokedStore._load(broker, stream, into) for into in sets),
                                    return_exceptions=True)

    assert asyncio.run(start_all()) == [0] * 8
