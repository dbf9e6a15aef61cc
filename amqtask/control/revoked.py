"""The set of revoked task ids a worker honours, bounded as Celery bounds its own:
at most 50,000 ids, each kept 3 hours (celery/worker/state.py REVOKES_MAX,
REVOKE_EXPIRES). Thread-safe: the control node adds, the worker asks."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable

REVOKES_MAX = 50_000
REVOKE_EXPIRES = 10_800.0  # seconds
TASK_ID_MAX = 255  # an AMQP short string: longer ids cannot be a real task's


def valid_task_ids(value: object, limit: int = REVOKES_MAX) -> list[str]:
    """The task ids in a control argument (one id or a list of them), ignoring
    anything that is not a non-empty string of at most 255 characters."""
    items = [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []
    return [i for i in items[:limit] if isinstance(i, str) and 0 < len(i) <= TASK_ID_MAX]


class RevokedSet:
    """Revoked ids with the time (epoch seconds) each was revoked; the oldest go
    first when the set is full, and each expires after `expires` seconds."""

    def __init__(self, *, maxlen: int = REVOKES_MAX, expires: float = REVOKE_EXPIRES,
                 now: Callable[[], float] = time.time) -> None:
        self.maxlen = maxlen
        self.expires = expires
        self._now = now
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str], at: float | None = None) -> list[str]:
        """Mark `ids` revoked (at `at`, default now); returns those not already there."""
        stamp = self._now() if at is None else at
        added = []
        with self._lock:
            self._purge(self._now())
            for task_id in ids:
                if stamp <= self._now() - self.expires:
                    continue  # already expired: an old entry read back from storage
                if task_id not in self._ids:
                    added.append(task_id)
                self._ids[task_id] = max(stamp, self._ids.get(task_id, stamp))
                self._ids.move_to_end(task_id)
            while len(self._ids) > self.maxlen:
                self._ids.popitem(last=False)
        return added

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            stamp = self._ids.get(task_id) if isinstance(task_id, str) else None
            return stamp is not None and stamp > self._now() - self.expires

    def ids(self) -> list[str]:
        """The live ids, oldest first."""
        with self._lock:
            self._purge(self._now())
            return list(self._ids)

    def __len__(self) -> int:
        return len(self.ids())

    def _purge(self, now: float) -> None:
        limit = now - self.expires
        while self._ids:
            oldest, stamp = next(iter(self._ids.items()))
            if stamp > limit:
                break
            del self._ids[oldest]
