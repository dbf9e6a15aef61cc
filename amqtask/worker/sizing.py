"""How many worker processes one `amqtask worker` runs, and how many task slots each.

One Python process handles messages on one core at most (its event loop reads
frames, decodes and acknowledges for every task, whatever the pool), so by default
a worker runs one consuming process per CPU, as Dramatiq does. `-c` keeps Celery's
meaning, the worker's concurrency in all: it is spread over the processes.

- processes: `--processes N` / `worker.processes`, else "auto": the number of CPUs,
  never more than the concurrency (`-c 1` is one task at a time, as in Celery).
  `solo` and `--autoscale` are one process's affair: one process.
- concurrency: `-c` / `worker.concurrency`, else per pool: the number of CPUs for
  `prefork` (Celery's default), four slots per CPU for `threads` and `asyncio`
  (threads are cheap, and most tasks wait on the network), one for `solo`.
- supervised: several processes always run under the supervisor (worker/processes.py),
  which replaces one that dies; so does a single process the defaults chose for a
  pool that runs tasks inside the consuming process (threads, asyncio), so that a
  task that kills its process, or a thread past its hard time limit, has a
  supervisor to replace the process (worker/registry.py). `--processes 1` is one
  plain process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

AUTO = "auto"
THREADS_PER_CPU = 4
IN_PROCESS_POOLS = ("threads", "asyncio")


@dataclass(frozen=True)
class Sizing:
    processes: int
    concurrency: int  # slots in all
    supervised: bool

    def slots(self, index: int) -> int:
        """Slots of process `index` (1-based): the concurrency spread evenly, at least one each."""
        base, extra = divmod(self.concurrency, self.processes)
        return max(1, base + (1 if index <= extra else 0))

    @property
    def most_slots(self) -> int:
        return self.slots(1)


def cpus() -> int:
    """The CPUs this process may run on (its affinity mask; cgroup quotas are not read)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_concurrency(pool: str, cpu_count: int) -> int:
    if pool == "solo":
        return 1
    if pool in IN_PROCESS_POOLS:
        return THREADS_PER_CPU * cpu_count
    return cpu_count


def size(pool: str, *, concurrency: int | None, processes: int | str | None, cpu_count: int,
         autoscale: bool = False) -> Sizing:
    """The worker's processes and slots; `concurrency` and `processes` as given (None:
    the defaults, see the module docstring)."""
    total = 1 if pool == "solo" else (concurrency or default_concurrency(pool, cpu_count))
    if isinstance(processes, int):
        return Sizing(processes, max(total, processes) if pool != "solo" else processes, supervised=processes > 1)
    if pool == "solo" or autoscale:
        return Sizing(1, total, supervised=False)
    count = max(1, min(cpu_count, total))
    return Sizing(count, total, supervised=count > 1 or pool in IN_PROCESS_POOLS)
