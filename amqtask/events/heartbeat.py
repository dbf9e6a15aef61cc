"""When a node sends worker-online, worker-heartbeat and worker-offline.

Receivers (Flower, `celery events`) count a node alive for a while after each
heartbeat they receive, so heartbeats must keep coming every `interval` seconds
whatever the worker is doing. The monitor link calls `due()` from its own loop."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class HeartbeatSchedule:
    """`interval` seconds between heartbeats; 0 means no worker events at all."""

    interval: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _next: float | None = field(default=None, init=False)

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def due(self) -> bool:
        """True when a heartbeat should go out now; then the next one is scheduled.
        The first call is always due (it is the worker-online moment)."""
        if not self.enabled:
            return False
        now = self.clock()
        if self._next is not None and now < self._next:
            return False
        # Scheduled from now, not from the missed slot: after a long stall one
        # heartbeat goes out, not a burst of catch-up ones.
        self._next = now + self.interval
        return True

    def reset(self) -> None:
        """Send the next heartbeat on the next call to `due()` (e.g. after a reconnect,
        or when a `heartbeat` control command asks for one now)."""
        self._next = None
