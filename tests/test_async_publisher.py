"""The asyncio publisher's decisions, on fake channels: a nack is sent again on a new
channel (RabbitMQ 3.10 keeps nacking a channel caught in a quorum leader change);
a broker that nacks every channel still gets a NackError."""
from __future__ import annotations

import asyncio

import aiormq
import pytest
from pamqp import commands as spec

from amqtask.amqp.port import AsyncPublisher
from amqtask.brokerurl import parse_broker_urls
from amqtask.errors import NackError
from amqtask.protocol import WireMessage
from amqtask.settings import BrokerSettings


class FakeChannel:
    def __init__(self, nacks: bool) -> None:
        self.nacks = nacks
        self.is_closed = False
        self.published = 0

    async def basic_publish(self, body, **kwargs):
        self.published += 1
        if self.nacks:
            raise aiormq.exceptions.DeliveryError(None, spec.Basic.Nack())
        return spec.Basic.Ack()

    async def close(self):
        self.is_closed = True


class FakePublisher(AsyncPublisher):
    def __init__(self, nacking_channels: int) -> None:
        super().__init__(BrokerSettings(urls=parse_broker_urls("amqp://127.0.0.1//"), publish_timeout=5),
                         name="test")
        self.nacking = nacking_channels
        self.channels: list[FakeChannel] = []

    async def _open(self):
        if self._channel is None:
            self._channel = FakeChannel(nacks=len(self.channels) < self.nacking)
            self.channels.append(self._channel)
        return self._channel


def message() -> WireMessage:
    return WireMessage(body=b"[]", headers={"task": "t"}, content_type="application/json",
                       content_encoding="utf-8", correlation_id="id-1")


def test_a_nack_is_sent_again_on_a_new_channel():
    publisher = FakePublisher(nacking_channels=1)

    async def go():
        await publisher.publish("x", "k", message())
        await publisher.close()

    asyncio.run(go())
    assert [c.published for c in publisher.channels] == [1, 1]
    assert publisher.confirmed == 1 and publisher.refused == 0


def test_a_broker_that_nacks_every_channel_still_refuses():
    publisher = FakePublisher(nacking_channels=100)

    async def go():
        with pytest.raises(NackError):
            await publisher.publish("x", "k", message())
        await publisher.close()

    asyncio.run(go())
    assert len(publisher.channels) == publisher.broker.publish_retries + 1
    assert publisher.refused == 1
