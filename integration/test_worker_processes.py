"""`amqtask worker --processes N`: N complete workers under one command, as users run it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


from .conftest import ROOT


def consuming_pids(harness, process) -> set[int]:
    return {r["pid"] for r in harness.pings(process, timeout=0.5) if r.get("consuming")}


def wait_for_processes(harness, process, count: int) -> set[int]:
    pids: set[int] = set()

    def ready() -> bool:
        nonlocal pids
        assert process.poll() is None, harness.output(process)
        pids = consuming_pids(harness, process)
        return len(pids) == count

    harness.wait_for(ready, what=f"{count} consuming worker processes")
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_processes_share_the_queue_and_run_every_task_once(harness):
    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1")
    pids = wait_for_processes(harness, worker, 2)
    for i in range(40):
        harness.module.record_task.delay(i, sleep=0.05)
    harness.wait_for(lambda: len(harness.records("end")) == 40, what="all tasks")
    ran = harness.records("start")
    assert sorted(r["tag"] for r in ran) == list(range(40))  # each exactly once
    assert {r["pid"] for r in ran} == pids  # both processes did work
    assert all(r["ppid"] == worker.pid for r in ran)
    out = harness.output(worker)
    assert "processes:   2" in out and "guest:***@" in out


def test_no_pool_flags_is_a_threads_process_per_cpu_under_a_supervisor(harness):
    from amqtask.worker.sizing import cpus

    worker = harness.start("--defaults")
    pids = wait_for_processes(harness, worker, cpus())
    for i in range(40):
        harness.module.record_task.delay(i, sleep=0.05)
    harness.wait_for(lambda: len(harness.records("end")) == 40, what="all tasks")
    ran = harness.records("start")
    assert sorted(r["tag"] for r in ran) == list(range(40))  # each exactly once
    assert {r["pid"] for r in ran} <= pids and all(r["ppid"] == worker.pid for r in ran)
    out = harness.output(worker)
    assert f"processes:   {cpus()}, each with its own connection, under a supervisor" in out
    assert "pool:        threads, 4 slots" in out


def test_one_sigterm_is_a_warm_shutdown_of_every_process(harness, amqp):
    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1", "--prefetch-multiplier", "1")
    wait_for_processes(harness, worker, 2)
    for i in range(6):
        harness.module.record_task.delay(i, sleep=1.5)
    harness.wait_for(lambda: len(harness.records("start")) == 2, what="both processes to start a task")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert len(harness.records("end")) == 2  # the running tasks finished
    assert amqp.queue_declare(harness.queue, passive=True).method.message_count == 4


def test_ctrl_c_to_the_whole_group_is_acted_on_once(harness):
    # A terminal's Ctrl-C (or a service manager's stop) signals every process of the
    # group; the processes must not take that, plus the forwarded one, as a cold stop.
    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1", new_session=True)
    wait_for_processes(harness, worker, 2)
    harness.module.record_task.delay("running", sleep=2)
    harness.wait_for(lambda: harness.records("start"), what="the task to start")
    os.killpg(worker.pid, signal.SIGINT)
    assert worker.wait(timeout=30) == 0
    assert [r["tag"] for r in harness.records("end")] == ["running"]


def test_a_killed_process_is_replaced_and_its_task_redelivered(harness):
    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1")
    first = wait_for_processes(harness, worker, 2)
    harness.module.record_task.delay("victim", sleep=3)
    harness.wait_for(lambda: harness.records("start"), what="the task to start")
    [started] = harness.records("start")
    os.kill(started["pid"], signal.SIGKILL)
    harness.wait_for(lambda: harness.records("end"), what="the rerun")
    rerun = harness.records("start")[-1]
    assert rerun["redelivered"] is True and rerun["pid"] != started["pid"]
    now = wait_for_processes(harness, worker, 2)  # a new process took the dead one's place
    assert started["pid"] not in now and len(now & first) == 1
    assert "starting another" in harness.output(worker)


def test_a_task_that_kills_its_process_runs_once_more_then_fails_not_in_a_loop(harness, amqp):
    """Threads run tasks inside the consuming process, so a task that kills it (a
    segfault, the OOM killer) comes back redelivered to the next process. Before: every
    process that took it died, for ever. Now the second death ends it: WorkerLostError,
    a dead letter, and the command goes on with two processes."""
    from .conftest import drain

    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1")
    wait_for_processes(harness, worker, 2)
    poison = harness.module.die.delay()
    with pytest.raises(Exception) as exc:
        poison.get(timeout=30)
    assert type(exc.value).__name__ == "WorkerLostError" and "second worker process" in str(exc.value)
    starts = harness.records("start")
    assert [r["redelivered"] for r in starts] == [False, True]  # two processes died, no third run
    assert len({r["pid"] for r in starts}) == 2
    harness.wait_for(lambda: amqp.queue_declare(f"{harness.queue}.dead", passive=True).method.message_count == 1,
                     what="the dead letter")
    [(_, props, _)] = drain(amqp, f"{harness.queue}.dead")
    assert "WorkerLostError" in props.headers["x-amqtask-reason"]
    wait_for_processes(harness, worker, 2)  # both replaced
    assert harness.module.add.delay(1, 2).get(timeout=20) == 3


def test_a_thread_past_its_hard_time_limit_retires_its_process(harness):
    """A thread cannot be stopped: the task fails at its hard limit, and its process
    finishes its other work and makes way for a new one, as a prefork child would be
    killed. Before: the hung thread held its slot for as long as the task ran."""
    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1")
    first = wait_for_processes(harness, worker, 2)
    hung = harness.module.hard.delay()  # sleeps 30 s, hard limit 0.5 s
    with pytest.raises(Exception) as exc:
        hung.get(timeout=20)
    assert type(exc.value).__name__ == "TimeLimitExceeded"
    harness.wait_for(lambda: len(consuming_pids(harness, worker) - first) == 1, what="a new process")
    assert len(consuming_pids(harness, worker)) == 2
    assert "passed its hard time limit and its thread cannot be stopped" in harness.output(worker)
    assert harness.module.add.delay(2, 2).get(timeout=20) == 4


def test_max_tasks_per_child_recycles_a_threads_process(harness):
    """The process is the child: after 3 tasks it makes way for a new one."""
    from collections import Counter

    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1", "--max-tasks-per-child", "3")
    wait_for_processes(harness, worker, 2)
    pids = Counter(harness.module.pid.delay().get(timeout=20) for _ in range(7))
    assert max(pids.values()) <= 3 and len(pids) >= 3, pids  # 2 x 3 tasks, then a new process
    assert worker.poll() is None
    assert "(--max-tasks-per-child 3); this process finishes its running tasks" in harness.output(worker)


def test_processes_stop_warmly_when_the_supervisor_dies(harness):
    worker = harness.start("--processes", "2", "-P", "threads", "-c", "1")
    pids = wait_for_processes(harness, worker, 2)
    harness.module.record_task.delay("running", sleep=2)
    harness.wait_for(lambda: harness.records("start"), what="the task to start")
    worker.kill()
    worker.wait()
    harness.wait_for(lambda: not any(alive(p) for p in pids), what="the orphaned processes to exit")
    assert [r["tag"] for r in harness.records("end")] == ["running"]  # finished, not killed


def test_a_process_that_cannot_start_fails_the_command(tmp_path):
    config = tmp_path / "routing.yaml"
    config.write_text("broker: {url: 'amqp://guest:guest@127.0.0.1:1//', connect_timeout: 1}\n"
                      "queues: {nowhere: {}}\n")
    env = {**os.environ, "WORKER_TEST_CONFIG": str(config), "WORKER_TEST_RECORD": str(tmp_path / "r"),
           "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "amqtask.cli", "worker", "-A", "integration.worker_app",
                          "--processes", "2", "-P", "solo"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stderr
    assert "cannot connect to the broker" in out.stderr and "could not run" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - started < 30
