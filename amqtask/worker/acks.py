"""Acknowledgements, coalesced: one `basic.ack(multiple=True)` for a run of settled
deliveries instead of one frame per message.

Only a contiguous run from the oldest unsettled delivery is acked with `multiple`
(it must not cover a message still running). Tags settled out of order are acked
one by one in the same flush, so a long task never holds back the acks of the
short ones after it. A flush happens once per event-loop turn, right after the
outcomes that asked for it: the ack still follows the outcome, never precedes it.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

log = logging.getLogger("amqtask.worker")


class AckBatcher:
    def __init__(self, channel: Any, on_lost: Callable[[int], None]) -> None:
        self.channel = channel  # the aiormq channel the deliveries came on
        self._on_lost = on_lost
        self._pending: deque[int] = deque()  # delivered, in tag order
        self._to_ack: set[int] = set()  # settled, ack not yet sent
        self._settled: set[int] = set()  # settled some other way (nack, or acked alone)
        self._scheduled = False

    def delivered(self, tag: int) -> None:
        self._pending.append(tag)

    def ack(self, tag: int) -> None:
        self._to_ack.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def settled_elsewhere(self, tag: int) -> None:
        """A nack or reject was sent for `tag`: it no longer blocks the run."""
        self._settled.add(tag)

    def _flush(self) -> None:
        self._scheduled = False
        last_in_run = None
        while self._pending and (self._pending[0] in self._to_ack or self._pending[0] in self._settled):
            tag = self._pending.popleft()
            if tag in self._to_ack:
                self._to_ack.discard(tag)
                last_in_run = tag
            else:
                self._settled.discard(tag)
        frames = [(last_in_run, True)] if last_in_run is not None else []
        for tag in sorted(self._to_ack):  # settled behind a still-running message
            frames.append((tag, False))
            self._settled.add(tag)
        self._to_ack.clear()
        for tag, multiple in frames:
            self._send(tag, multiple)

    def _send(self, tag: int, multiple: bool) -> None:
        try:
            future = self.channel.basic_ack(delivery_tag=tag, multiple=multiple)
        except Exception as exc:  # the channel is gone; the broker redelivers these
            log.warning("could not ack up to delivery %s (%s); the broker will redeliver", tag, type(exc).__name__)
            self._on_lost(tag)
            return
        if asyncio.isfuture(future) or asyncio.iscoroutine(future):
            task = asyncio.ensure_future(future)
            task.add_done_callback(lambda t, tag=tag: self._check(t, tag))

    def _check(self, task: asyncio.Future, tag: int) -> None:
        if task.cancelled() or task.exception() is not None:
            self._on_lost(tag)
