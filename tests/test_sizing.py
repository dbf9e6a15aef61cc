"""How many processes and slots `amqtask worker` runs (amqtask/worker/sizing.py)."""
from __future__ import annotations

import pytest

from amqtask.worker.sizing import size


@pytest.mark.parametrize("pool, concurrency, processes, cpus, expected", [
    # no flags: one process per CPU, 4 threads each, supervised
    ("threads", None, "auto", 2, (2, 8, True, [4, 4])),
    ("threads", None, None, 4, (4, 16, True, [4, 4, 4, 4])),
    # a single CPU: one process, still supervised (it runs the tasks itself)
    ("threads", None, "auto", 1, (1, 4, True, [4])),
    ("asyncio", None, "auto", 2, (2, 8, True, [4, 4])),
    # -c is Celery's concurrency in all: -c 1 runs one task at a time, in one process
    ("threads", 1, "auto", 8, (1, 1, True, [1])),
    ("threads", 5, "auto", 2, (2, 5, True, [3, 2])),
    # prefork: Celery's default concurrency, one process per CPU
    ("prefork", None, "auto", 2, (2, 2, True, [1, 1])),
    ("prefork", None, "auto", 1, (1, 1, False, [1])),
    ("prefork", 8, "auto", 2, (2, 8, True, [4, 4])),
    # solo: one task at a time, one process
    ("solo", None, "auto", 4, (1, 1, False, [1])),
    ("solo", 8, None, 4, (1, 1, False, [1])),
    # --processes N: as asked, at least one slot each; 1 is a plain process
    ("threads", 1, 2, 8, (2, 2, True, [1, 1])),
    ("threads", 8, 1, 8, (1, 8, False, [8])),
    ("solo", None, 3, 1, (3, 3, True, [1, 1, 1])),
])
def test_processes_and_slots(pool, concurrency, processes, cpus, expected):
    sizing = size(pool, concurrency=concurrency, processes=processes, cpu_count=cpus)
    count, total, supervised, slots = expected
    assert (sizing.processes, sizing.concurrency, sizing.supervised) == (count, total, supervised)
    assert [sizing.slots(i) for i in range(1, count + 1)] == slots


def test_autoscale_is_one_process_unless_processes_are_asked_for():
    assert size("threads", concurrency=None, processes="auto", cpu_count=4, autoscale=True).processes == 1
    assert size("threads", concurrency=None, processes=2, cpu_count=4, autoscale=True).processes == 2
