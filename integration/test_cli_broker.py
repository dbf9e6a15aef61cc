"""The CLI as a user runs it, against the real broker: declare, call, purge,
conflicts, unroutable calls; and a real Celery 5 worker running what we published."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, drain, topology_yaml, track_topology


def amqtask(*args: str, config, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amqtask.cli", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def config(tmp_path, prefix, amqp, broker_url):
    track_topology(amqp, prefix)
    path = tmp_path / "routing.yaml"
    path.write_text(topology_yaml(prefix))
    return path


def test_declare_then_call_leaves_exactly_one_message(config, amqp, prefix):
    declared = amqtask("declare", config=config)
    assert declared.returncode == 0, declared.stderr
    assert "declared 2 exchanges, 4 queues" in declared.stdout
    again = amqtask("declare", config=config)
    assert again.returncode == 0  # idempotent
    called = amqtask("call", "projq.tasks.add", "--args", "[2,3]", config=config)
    assert called.returncode == 0, called.stderr
    task_id = called.stdout.split("task id:")[1].split()[0]
    assert f"queues:      {prefix}.web_tasks" in called.stdout
    [(method, props, body)] = drain(amqp, f"{prefix}.web_tasks")
    assert props.headers["id"] == task_id and json.loads(body)[0] == [2, 3]


def test_call_to_nowhere_is_unroutable(config):
    assert amqtask("declare", config=config).returncode == 0
    called = amqtask("call", "projq.tasks.add", "--routing-key", "zz.nowhere", config=config)
    assert called.returncode == 1
    assert "unroutable" in called.stderr and "zz.nowhere" in called.stderr
    assert "Traceback" not in called.stderr


def test_declare_conflict_is_named_not_a_traceback(config, amqp, prefix):
    amqp.queue_declare(f"{prefix}.web_tasks", durable=True, arguments={"x-max-priority": 3})
    declared = amqtask("declare", config=config)
    assert declared.returncode == 1
    assert f"conflict: queue '{prefix}.web_tasks'" in declared.stderr
    assert "x-max-priority" in declared.stderr and "Traceback" not in declared.stderr


def test_purge(config, amqp, prefix):
    assert amqtask("declare", config=config).returncode == 0
    for _ in range(3):
        assert amqtask("call", "projq.web.x", config=config).returncode == 0
    purged = amqtask("purge", "-Q", f"{prefix}.web_tasks", "-f", config=config)
    assert purged.returncode == 0 and "purged 3 messages" in purged.stdout
    unknown = amqtask("purge", "-Q", "nope", "-f", config=config)
    assert unknown.returncode == 2


def test_global_options_before_the_subcommand_reach_declare_and_call(config, amqp, prefix, tmp_path, broker_url):
    """`celery -b URL call ...` and `celery --workdir DIR -A proj ...`: the broker from -b
    over routing.yaml's (here unreachable); -A's App, imported from --workdir, gives the
    settings to a command that has no -A of its own."""
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(topology_yaml(prefix, url="amqp://nobody:hunter2@127.0.0.1:1//"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "proj_app.py").write_text(f"from amqtask import App\napp = App('proj', config={str(config)!r})\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "amqtask", *args], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)

    declared = run("--workdir", str(project), "-A", "proj_app", "declare")
    assert declared.returncode == 0, declared.stderr
    assert "declared 2 exchanges, 4 queues" in declared.stdout
    called = run("-b", broker_url, "call", "projq.tasks.add", "--args", "[1, 2]", "--config", str(unreachable))
    assert called.returncode == 0, called.stderr
    assert "hunter2" not in called.stdout + called.stderr
    [(method, props, body)] = drain(amqp, f"{prefix}.web_tasks")
    assert json.loads(body)[0] == [1, 2]


def test_celery_worker_runs_what_amqtask_published(config, prefix, tmp_path, broker_url):
    """The acceptance check for the wire format: Celery 5 itself consumes and runs it."""
    assert amqtask("declare", config=config).returncode == 0
    called = amqtask("call", "projq.tasks.add", "--args", "[2,3]", config=config)
    assert called.returncode == 0, called.stderr
    task_id = called.stdout.split("task id:")[1].split()[0]
    result_file = tmp_path / "peer-result.json"
    env = {**os.environ, "AMQTASK_BROKER_URL": broker_url, "PEER_RESULT_FILE": str(result_file),
           "PEER_QUEUE": f"{prefix}.web_tasks",
           "PYTHONPATH": str(ROOT / "integration" / "celery_peer")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "solo", "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not result_file.exists() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0]
    assert result_file.exists(), f"Celery worker did not run the task:\n{output}"
    assert json.loads(result_file.read_text()) == {"args": [2, 3], "result": 5, "id": task_id}
