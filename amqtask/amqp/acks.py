"""Acknowledgements, coalesced: one `basic.ack(multiple=True)` for a run of settled
deliveries instead of one frame per message.

Only a contiguous run from the oldest unsettled delivery is acked with `multiple`
(it must not cover a message still running). Tags settled out of order are acked
one by one in the same flush, so a long task never holds back the acks of the
short ones after it. An ack always follows its outcome, never precedes it.

Every ack frame is a write to the broker's socket, and on a busy worker those
writes cost more than anything else the event loop does. So acks are held back
while at least `slots` delivered messages are still unsettled (work the pool has
in hand, so holding cannot starve it), and flushed as soon as fewer are, when
half the prefetch `window` is waiting to be acked (so the broker keeps sending),
or after `max_delay` at the latest.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

log = logging.getLogger("amqtask.worker")


class AckBatcher:
    def __init__(self, channel: Any, on_lost: Callable[[int], None], *, window: int = 0, slots: int = 1,
                 max_delay: float = 0.05, on_sent: Callable[[int, int], None] | None = None) -> None:
        self.channel = channel  # the channel the deliveries came on
        self._on_lost = on_lost
        self._on_sent = on_sent  # (messages acknowledged, frames sent), for metrics
        self._max_batch = window // 2  # flush at this many waiting acks (0: never hold)
        self._slots = slots
        self._max_delay = max_delay
        self._pending: deque[int] = deque()  # delivered, in tag order
        self._to_ack: set[int] = set()  # settled, ack not yet sent
        self._settled: set[int] = set()  # settled some other way (nack, or acked alone)
        self._scheduled = False
        self._deadline: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Future] = set()

    def resize(self, *, window: int, slots: int) -> None:
        """A new prefetch window and pool size (the pool grew or shrank): hold acks
        and flush them by these from now on."""
        self._max_batch = window // 2
        self._slots = slots

    def delivered(self, tag: int) -> None:
        self._pending.append(tag)

    def ack(self, tag: int) -> None:
        self._to_ack.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._maybe_flush)

    def nack(self, tag: int, *, requeue: bool) -> None:
        """Send a nack for `tag` now. Until its frame is written the tag blocks the
        run, so no `multiple` ack sent meanwhile can cover (and so ack) it. (A channel
        that writes at once, as pika's, has written it when basic_nack returns.)"""
        try:
            sent = self.channel.basic_nack(delivery_tag=tag, requeue=requeue)
        except Exception as exc:  # the channel is gone; the broker redelivers it
            log.warning("could not nack delivery %s (%s); the broker will redeliver it", tag, type(exc).__name__)
            self._on_lost(tag)
            return
        if sent is None:
            self._settled.add(tag)
            self.ack_pending()
            return
        sending = asyncio.ensure_future(sent)
        self._sending.add(sending)
        sending.add_done_callback(lambda t: self._nacked(t, tag))

    def _nacked(self, sending: asyncio.Future, tag: int) -> None:
        self._sending.discard(sending)
        if sending.cancelled() or sending.exception() is not None:
            self._on_lost(tag)
        self._settled.add(tag)
        self.ack_pending()

    def ack_pending(self) -> None:
        """Schedule a flush of whatever is due (after a change that unblocks the run)."""
        if self._to_ack and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._maybe_flush)

    def _maybe_flush(self) -> None:
        self._scheduled = False
        if not self._to_ack:
            return
        if self._max_batch and len(self._to_ack) < self._max_batch and self._unsettled() >= self._slots:
            if self._deadline is None:
                self._deadline = asyncio.get_running_loop().call_later(self._max_delay, self.flush)
            return
        self.flush()

    def _unsettled(self) -> int:
        return len(self._pending) - len(self._to_ack) - len(self._settled)

    def flush(self) -> None:
        """Send every ack that is due now."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        last_in_run = None
        acked = len(self._to_ack)
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
        if self._on_sent is not None and frames:
            self._on_sent(acked, len(frames))

    async def drain(self) -> None:
        """Flush, and wait until the acks sent so far are written (before a close)."""
        self.flush()
        if self._sending:
            await asyncio.wait(set(self._sending))

    def _send(self, tag: int, multiple: bool) -> None:
        try:
            future = self.channel.basic_ack(delivery_tag=tag, multiple=multiple)
        except Exception as exc:  # the channel is gone; the broker redelivers these
            log.warning("could not ack up to delivery %s (%s); the broker will redeliver", tag, type(exc).__name__)
            self._on_lost(tag)
            return
        if asyncio.isfuture(future) or asyncio.iscoroutine(future):
            task = asyncio.ensure_future(future)
            self._sending.add(task)
            task.add_done_callback(lambda t, tag=tag: self._check(t, tag))

    def _check(self, task: asyncio.Future, tag: int) -> None:
        self._sending.discard(task)
        if task.cancelled() or task.exception() is not None:
            self._on_lost(tag)
