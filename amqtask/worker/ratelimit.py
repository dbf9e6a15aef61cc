"""Per-task-type rate limits ("500/m"), per worker. A task over its rate is not held
in the worker: it gets a reserved start time and is parked in the broker until then."""
from __future__ import annotations

import re

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
SLOT_HEADER = "x-amqtask-rate-slot"


def parse_rate(text: str | float | None) -> float | None:
    """Tasks per second, or None for no limit ("0" also means none, as in Celery)."""
    if text is None:
        return None
    match = _RATE.match(str(text))
    if not match:
        raise ValueError(f"invalid rate limit {text!r}; write '100/s', '500/m' or '10/h'")
    rate = float(match.group(1)) / _PER[match.group(2) or "s"]
    return rate or None


class RateLimiter:
    def __init__(self) -> None:
        self._next_free: dict[str, float] = {}

    def reserve(self, name: str, per_second: float, now: float) -> float:
        """Reserve the next start slot for `name`; return its time (<= now: run now)."""
        start = max(now, self._next_free.get(name, now))
        self._next_free[name] = start + 1.0 / per_second
        return start

    def forget(self, name: str) -> None:
        """Count `name`'s rate afresh (its limit changed)."""
        self._next_free.pop(name, None)
