"""The registry of running tasks shared by a supervised worker's processes
(amqtask/worker/registry.py): a task that was running in a process that died is
known as lost, before and after the supervisor reaps the process."""
from __future__ import annotations

import os
import signal

from amqtask.worker.registry import RunningRegistry


def run_and_die(registry: RunningRegistry, index: int, task_id: str, *, finish_first: str | None = None) -> int:
    """Fork a process that registers `task_id` as running and is killed mid-task."""
    pid = os.fork()
    if pid == 0:
        registry.enter(index)
        if finish_first is not None:
            registry.finished(registry.started(finish_first))
        registry.started(task_id)
        os.kill(os.getpid(), signal.SIGKILL)
    return pid


def test_a_task_running_in_a_dead_process_is_lost_before_and_after_the_supervisor_hears():
    registry = RunningRegistry(2, slots=4)
    registry.enter(1)  # this process is the other worker process
    pid = run_and_die(registry, 0, "task-1", finish_first="done-1")
    while registry.lost("task-1") is None:  # dead, not yet reaped (a zombie)
        pass
    assert registry.lost("task-1") == (1, f"worker process {pid} died while running it")
    assert registry.lost("done-1") is None  # it finished before the process died
    _, status = os.waitpid(pid, 0)
    assert registry.process_died(0, pid, "was killed by signal 9") == ["task-1"]
    assert registry.lost("task-1") == (1, f"worker process {pid} was killed by signal 9")


def test_a_task_lost_twice_is_counted_twice():
    registry = RunningRegistry(2, slots=2)
    registry.enter(1)
    for _ in range(2):
        pid = run_and_die(registry, 0, "poison")
        os.waitpid(pid, 0)
        registry.process_died(0, pid, "was killed by signal 9")
    assert registry.lost("poison")[0] == 2


def test_a_live_process_running_the_task_does_not_make_it_lost():
    """A redelivery after a cut connection: the task still runs in a live process."""
    registry = RunningRegistry(2, slots=2)
    registry.enter(1)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        registry.enter(0)
        registry.started("running-there")
        os.write(ready_w, b"x")
        signal.pause()
    os.read(ready_r, 1)
    try:
        assert registry.lost("running-there") is None
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_slots_are_reused_and_a_full_region_skips_guarding():
    registry = RunningRegistry(1, slots=2)
    registry.enter(0)
    first, second = registry.started("a"), registry.started("b")
    assert registry.started("c") is None  # no slot free: not guarded, not an error
    registry.finished(first)
    assert registry.started("d") is not None
    registry.finished(second)
    assert registry.started("x" * 300) is None  # longer than a task id can be on the wire


def test_the_ring_keeps_the_latest_lost_tasks():
    from amqtask.worker import registry as module

    registry = RunningRegistry(1, slots=1)
    for n in range(module.RING + 10):
        registry.enter(0)
        registry.started(f"t-{n}")
        registry.process_died(0, 1000 + n, "exited with status 1")
    assert registry.lost("t-0") is None  # overwritten
    assert registry.lost(f"t-{module.RING + 9}")[1] == f"worker process {1000 + module.RING + 9} exited with status 1"


def test_a_process_is_ready_once_it_says_so_until_it_is_replaced():
    registry = RunningRegistry(2, slots=1)
    registry.enter(0)
    assert not registry.was_ready(0)  # ending now: it could not start
    registry.mark_ready()
    assert registry.was_ready(0) and not registry.was_ready(1)
    registry.process_died(0, os.getpid(), "exited with status 3")
    assert not registry.was_ready(0)  # its replacement starts afresh
