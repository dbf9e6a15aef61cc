"""Lamport's logical clock, kept the way Celery and kombu keep theirs: forwarded
before each event or reply a node sends, adjusted from the `clock` header of each
control message it receives, so that receivers can order events across nodes."""
from __future__ import annotations

import threading

# A clock header is an AMQP long at most; anything larger (or not an integer) is
# hostile or garbage and must not drag every later event's clock with it.
_CLOCK_MAX = 2**63 - 1


class LamportClock:
    """A thread-safe Lamport clock."""

    def __init__(self, value: int = 0) -> None:
        self._value = value
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._value

    def forward(self) -> int:
        """Advance for an event this node sends; returns the new value."""
        with self._lock:
            self._value += 1
            return self._value

    def adjust(self, other: object) -> int:
        """Catch up with a value received from another node: max(ours, theirs) + 1.
        A value that is not a non-negative integer within an AMQP long only advances
        the clock by one."""
        seen = other if isinstance(other, int) and not isinstance(other, bool) and 0 <= other <= _CLOCK_MAX else 0
        with self._lock:
            self._value = max(self._value, seen) + 1
            return self._value
