"""The worker flags init scripts and unit files pass, as Celery's users pass them."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from amqtask.brokerurl import parse_broker_urls
from amqtask.worker.sizing import cpus, size

from .conftest import ROOT


def run_cli(harness, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amqtask.cli", *args], env=harness.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_pidfile_refuses_a_second_worker_and_is_removed_at_exit(harness, tmp_path):
    pidfile = tmp_path / "worker.pid"
    first = harness.start("-P", "threads", "--pidfile", str(pidfile))
    assert int(pidfile.read_text()) == first.pid
    second = run_cli(harness, "worker", "-A", "integration.worker_app", "-Q", harness.queue, "--pidfile",
                     str(pidfile))
    assert second.returncode == 1 and "already running" in second.stderr and str(first.pid) in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert not pidfile.exists()


def test_a_stale_pidfile_is_replaced(harness, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pidfile = tmp_path / "worker.pid"
    pidfile.write_text(f"{dead.pid}\n")
    worker = harness.start("-P", "threads", "--pidfile", str(pidfile))
    assert int(pidfile.read_text()) == worker.pid


def test_logfile_gets_celerys_per_task_lines_at_info(harness, tmp_path):
    logfile = tmp_path / "worker.log"
    harness.start("-P", "threads", "-l", "info", "--logfile", str(logfile))
    result = harness.module.add.delay(2, 3)
    assert result.get(timeout=20) == 5
    wait_until(lambda: "succeeded in" in logfile.read_text(), what="the task's log line")
    text = logfile.read_text()
    assert f"Task t.add[{result.id}] received" in text
    assert f"Task t.add[{result.id}] succeeded in" in text and text.rstrip().endswith("5")


def test_detach_runs_in_the_background_with_pidfile_and_logfile(harness, tmp_path):
    pidfile, logfile = tmp_path / "d.pid", tmp_path / "d.log"
    harness.declare()  # so a task can be queued before the daemon has connected
    started = run_cli(harness, "worker", "-A", "integration.worker_app", "-Q", harness.queue, "-P", "threads",
                      "-n", f"{harness.prefix}-daemon@localhost", "--detach", "--pidfile", str(pidfile), "--logfile",
                      str(logfile), "--workdir", str(ROOT), "--config", str(harness.config))
    assert started.returncode == 0, started.stderr
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the daemon's pidfile")
    pid = int(pidfile.read_text())
    try:
        assert os.getsid(pid) != os.getsid(0)  # a session of its own: no terminal controls it
        assert harness.module.add.delay(20, 22).get(timeout=30) == 42
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), what="the daemon to stop")
    assert not pidfile.exists() and "consuming from" in logfile.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="--uid needs root (CI runs as root)")
def test_uid_and_gid_drop_root(harness):
    nobody = pwd.getpwnam("nobody")
    # Files nobody can read: the config and the app, in a directory of its own.
    shared = Path(tempfile.mkdtemp(prefix="amqtask-uid-"))
    try:
        shared.chmod(0o755)
        config = shared / "routing.yaml"
        shutil.copy(harness.config, config)
        config.chmod(0o644)
        record = shared / "record.jsonl"
        record.touch()
        record.chmod(0o666)
        env = {**harness.env, "WORKER_TEST_CONFIG": str(config), "WORKER_TEST_RECORD": str(record)}
        harness.declare()
        process = subprocess.Popen(
            [sys.executable, "-m", "amqtask.cli", "worker", "-A", "integration.worker_app", "-Q", harness.queue,
             "-P", "threads", "-n", f"{harness.prefix}-nobody@localhost", "--uid", "nobody", "--gid", "nogroup"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        process.name, process.log_path = f"{harness.prefix}-nobody@localhost", os.devnull  # for wait_consuming
        process.count = size("threads", concurrency=None, processes="auto", cpu_count=cpus()).processes
        try:
            harness.wait_consuming(process)
            ran_in = harness.module.pid.delay().get(timeout=30)  # a worker process under the supervisor
            for pid in (process.pid, ran_in):
                status = Path(f"/proc/{pid}/status").read_text()
                uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
                assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    finally:
        shutil.rmtree(shared)


def test_an_undeclared_queue_is_refused_with_a_suggestion(harness):
    typo = harness.queue[:-1]  # "<prefix>.wor"
    refused = run_cli(harness, "worker", "-A", "integration.worker_app", "-Q", typo)
    assert refused.returncode == 2
    assert f"queue {typo!r} is not declared" in refused.stderr and f"did you mean {harness.queue!r}" in refused.stderr


def test_create_missing_queues_consumes_it(harness, amqp):
    extra = f"{harness.prefix}.extra"
    amqp.track("queue", extra)
    amqp.track("queue", f"{extra}.dead")
    process = harness.start("-P", "threads", "--create-missing-queues", "-Q", extra)  # the last -Q counts
    sent = harness.app.send_task("t.add", (1, 1), exchange="", routing_key=extra)  # straight to that queue
    assert sent.get(timeout=20) == 2
    assert f"queue {extra!r} is not in" in harness.output(process)


def test_include_imports_more_task_modules(harness):
    harness.start("-P", "threads", "-I", "integration.extra_tasks")
    assert harness.app.send_task("t.extra", (3,)).get(timeout=20) == 9


def test_celery_flags_with_nothing_to_do_are_accepted_and_said_once(harness, tmp_path):
    logfile = tmp_path / "w.log"
    harness.start("-P", "threads", "--without-gossip", "--without-mingle", "-s", str(tmp_path / "celerybeat"),
                  "-l", "info", "--logfile", str(logfile))
    text = logfile.read_text()
    assert "--without-gossip" in text and "--without-mingle" in text and "RabbitMQ, not in a file" in text


def test_autoscale_grows_the_pool_with_the_work_in_hand(harness):
    worker = harness.start("-P", "threads", "--autoscale", "3,1", "--prefetch-multiplier", "2")
    stats = run_cli(harness, "inspect", "stats", "-d", worker.name, "--json", "--config", str(harness.config))
    assert '"max-concurrency": 1' in stats.stdout
    for i in range(6):
        harness.module.record_task.delay(i, sleep=3)
    # three run at once once the pool has grown (one slot could only run them one by one)
    wait_until(lambda: len(harness.records("start")) - len(harness.records("end")) >= 3, 20, "three at once")
    grown = run_cli(harness, "inspect", "stats", "-d", worker.name, "--json", "--config", str(harness.config))
    assert '"max-concurrency": 3' in grown.stdout


def test_autoscale_needs_a_resizable_pool(harness):
    refused = run_cli(harness, "worker", "-A", "integration.worker_app", "-Q", harness.queue, "-P", "solo",
                      "--autoscale", "4,2")
    assert refused.returncode == 2 and "prefork or threads" in refused.stderr


# -- Celery's command lines, unchanged but for the program name -------------------------------
AMQTASK = str(Path(sys.executable).with_name("amqtask"))  # the console script a unit file runs


def start_command(harness, *argv: str, name: str, concurrency: int | None = None):
    """Start a whole worker command line as a unit file would, as one of the harness's
    workers (stopped with them); returns once each of its processes consumes (as many
    as the defaults give, see amqtask/worker/sizing.py)."""
    log = open(harness.record_file.parent / f"{harness.prefix}-{len(harness.processes)}.log", "w")
    process = subprocess.Popen(list(argv), env=harness.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    count = size("threads", concurrency=concurrency, processes="auto", cpu_count=cpus()).processes
    process.name, process.log_path, process.count = name, log.name, count
    harness.processes.append(process)
    harness.wait_consuming(process)
    return process


def test_seed_celery_dash_a_before_worker(harness):
    """celery -A tasks worker --loglevel=info (seeds 000, 002, 004), plus a node name of its own."""
    name = f"{harness.prefix}-seed0@localhost"
    worker = start_command(harness, AMQTASK, "-A", "integration.worker_app", "worker", "--loglevel=info",
                           "-n", name, name=name)
    result = harness.module.add.delay(2, 2)
    assert result.get(timeout=20) == 4
    wait_until(lambda: f"Task t.add[{result.id}] succeeded in" in harness.output(worker), what="the task's log line")


def test_seed_celery_4_advanced_command_line(harness):
    """Seed 002's "celery worker --without-gossip --without-mingle --heartbeat-interval 60
    -A tasks.cma.task -c 5 -E -Q cma_queue -l info -n cma.%%h -Ofair" (systemd turns %%h into %h)."""
    name = f"amqtask@{harness.prefix}.{socket.gethostname()}"
    worker = start_command(harness, AMQTASK, "worker", "--without-gossip", "--without-mingle",
                           "--heartbeat-interval", "60", "-A", "integration.worker_app", "-c", "5", "-E", "-Q",
                           harness.queue, "-l", "info", "-n", f"{harness.prefix}.%h", "-Ofair", name=name,
                           concurrency=5)
    assert harness.module.add.delay(3, 4).get(timeout=20) == 7
    sizing = size("threads", concurrency=5, processes="auto", cpu_count=cpus())
    assert f"{sizing.slots(1)} slots" in harness.output(worker) and sizing.concurrency == 5


def test_seed_python_dash_m_with_long_options(harness, tmp_path):
    """Seed 003: python -m celery worker --loglevel=DEBUG --app=... --queues=$1 --hostname=$2 --pidfile=$3."""
    pidfile = tmp_path / "w.pid"
    name = f"{harness.prefix}-seed3@localhost"
    worker = start_command(harness, sys.executable, "-m", "amqtask", "worker", "--loglevel=DEBUG",
                           "--app=integration.worker_app", f"--queues={harness.queue}", f"--hostname={name}",
                           f"--pidfile={pidfile}", name=name)
    assert int(pidfile.read_text()) == worker.pid
    assert harness.module.add.delay(5, 6).get(timeout=20) == 11


def test_broker_flag_overrides_routing_yamls_url_and_is_not_shown(harness, tmp_path, broker_url):
    """-b wins over routing.yaml's broker.url (here unreachable), and its password stays hidden."""
    from .conftest import worker_yaml

    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(worker_yaml(harness.prefix, url="amqp://nobody:hunter2@127.0.0.1:1//"))
    worker = harness.start("-P", "threads", "--config", str(elsewhere), "-b", broker_url)
    assert harness.module.add.delay(1, 2).get(timeout=20) == 3
    used = parse_broker_urls(broker_url)[0]
    banner = harness.output(worker)
    assert f"broker:      {used.redacted()}" in banner
    assert f":{used.password}@" not in banner and "hunter2" not in banner and "127.0.0.1:1/" not in banner


def test_without_heartbeat_sends_no_worker_events_but_task_events(harness, amqp):
    """--without-heartbeat: no worker-online, -heartbeat or -offline (Celery's Heart is off);
    -E task events still flow."""
    from .monitoring import EventLog

    name = f"{harness.prefix}-nohb@localhost"
    events = EventLog(harness.app.settings.broker, {name})
    try:
        worker = harness.start("-P", "threads", "-E", "--without-heartbeat", name=name)
        result = harness.module.add.delay(1, 1)
        assert result.get(timeout=20) == 2
        events.wait("task-succeeded", result.id)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        # Anything the worker sent reached the broker before it exited: a marker sent now
        # arrives after it, so once the marker is here nothing of the worker's is missing.
        amqp.basic_publish("celeryev", "worker.marker", json.dumps({"type": "test-marker", "hostname": name}))
        events.wait("test-marker")
        sent = [e["type"] for e in events.events]
        assert "task-received" in sent and [t for t in sent if t.startswith("worker-")] == []
    finally:
        events.close()


def test_worker_signals_on_a_real_prefork_worker(harness):
    """worker_process_init in each pool child before it runs anything, worker_ready once
    in the worker, worker_shutdown once as it stops."""
    worker = harness.start("-P", "prefork", "-c", "2", "-I", "integration.signal_tasks")
    harness.wait_for(lambda: len(harness.records("worker_process_init")) == 2, what="both children's init")
    ran = [harness.module.record_task.delay(i) for i in range(4)]
    assert [r.get(timeout=20) for r in ran] == [0, 1, 2, 3]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    records = harness.records()
    inits = [r for r in records if r["event"] == "worker_process_init"]
    assert len(inits) == 2 and {r["ppid"] for r in inits} == {worker.pid} and len({r["pid"] for r in inits}) == 2
    for start in (r for r in records if r["event"] == "start"):
        init = next(r for r in inits if r["pid"] == start["pid"])  # ran in a child that was initialised
        assert records.index(init) < records.index(start)
    lifecycle = [(r["event"], r["pid"], r["hostname"]) for r in records
                 if r["event"] in ("worker_ready", "worker_shutdown")]
    assert lifecycle == [("worker_ready", worker.pid, worker.name), ("worker_shutdown", worker.pid, worker.name)]
