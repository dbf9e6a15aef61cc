"""Closing an App leaves nothing behind: its reply queue is deleted, from blocking
code (close) and from asyncio code (aclose) alike."""
from __future__ import annotations

import asyncio

import pika
import pytest

from amqtask import App
from amqtask.topology.loader import check_text

from .conftest import topology_yaml, track_topology


@pytest.fixture
def app(prefix, amqp, broker_url):
    track_topology(amqp, prefix)
    settings = check_text(topology_yaml(prefix), source=f"{prefix}.yaml").settings
    app = App("test", settings=settings)
    assert app.publisher.transport.declare(settings.topology) == []
    yield app
    app.close()


def reply_queue_exists(amqp, name: str) -> bool:
    channel = amqp.connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    channel.close()
    return True


def test_aclose_deletes_the_reply_queue(app, amqp):
    async def main() -> str:
        await app.send_task_async("projq.tasks.add", (2, 3))
        reply_queue = app.publisher.results.queue.name
        assert reply_queue_exists(amqp, reply_queue)
        await app.aclose()
        return reply_queue

    assert not reply_queue_exists(amqp, asyncio.run(main()))


def test_close_deletes_the_reply_queue(app, amqp):
    app.send_task("projq.tasks.add", (2, 3))
    reply_queue = app.publisher.results.queue.name
    assert reply_queue_exists(amqp, reply_queue)
    app.close()
    assert not reply_queue_exists(amqp, reply_queue)


def test_close_after_the_connection_was_cut_still_deletes_the_reply_queue(prefix, amqp, proxy, broker_url):
    """The results connection died (and has not noticed): close opens another to delete."""
    track_topology(amqp, prefix)
    settings = check_text(topology_yaml(prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//"),
                          source=f"{prefix}.yaml").settings
    app = App("test", settings=settings)
    assert app.publisher.transport.declare(settings.topology) == []
    app.send_task("projq.tasks.add", (2, 3))
    reply_queue = app.publisher.results.queue.name
    proxy.cut()
    app.close()
    assert not reply_queue_exists(amqp, reply_queue)


def test_close_with_the_broker_gone_returns_without_raising(prefix, amqp, proxy, broker_url):
    track_topology(amqp, prefix)
    settings = check_text(topology_yaml(prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//"),
                          source=f"{prefix}.yaml").settings
    app = App("test", settings=settings)
    assert app.publisher.transport.declare(settings.topology) == []
    app.send_task("projq.tasks.add", (2, 3))
    reply_queue = app.publisher.results.queue.name
    proxy.refuse(True)
    proxy.cut()
    app.close()  # nothing to reach: the queue is left to expire (results.expires)
    assert reply_queue_exists(amqp, reply_queue)
    amqp.queue_delete(reply_queue)
