"""Helpers and fixtures for the monitoring tests: `amqtask worker` processes on a
per-test topology, Celery's CLI and Flower as subprocesses, and an
event log read from `celeryev`. Every name is unique per test; the exchanges Celery
shares (celeryev, celery.pidbox, reply.celery.pidbox) are left in place."""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from amqtask.amqp.control_client import read_events
from amqtask.brokerurl import parse_broker_urls
from amqtask.settings import BrokerSettings

from .conftest import ROOT
from .private_broker import free_port, wait_until  # noqa: F401 - re-exported to the monitoring tests

CELERY_APP = "integration.celery_peer.monitor_app"


def monitor_yaml(prefix: str, url: str) -> str:
    return f"""\
broker:
  url: {url}
  publish_timeout: 5
defaults:
  exchange: {prefix}.x
  routing_key: work
exchanges:
  {prefix}.x: {{type: direct}}
  {prefix}.full.x: {{type: fanout}}
queues:
  {prefix}.work:
    bindings:
      - {{exchange: {prefix}.x, routing_key: work}}
  {prefix}.other:
    bindings:
      - {{exchange: {prefix}.x, routing_key: other}}
  # Its dead letters go to a queue that is always full and refuses them: the broker
  # nacks the worker's dead-letter publish.
  {prefix}.refusing:
    dead_letter_exchange: {prefix}.full.x
    bindings:
      - {{exchange: {prefix}.x, routing_key: refusing}}
  {prefix}.full:
    max_length: 0
    overflow: reject-publish
    bindings:
      - {{exchange: {prefix}.full.x}}
routes:
  - task: m.other
    routing_key: other
worker:
  revoked_stream: {prefix}.revoked
"""


# The monitoring flags the tests use, as `amqtask worker` spells them.
WORKER_FLAGS = {"--events": "-E", "--prefetch": "--prefetch-multiplier"}


class NodeRunner:
    """Runs `amqtask worker` processes (threads pool, one slot, so what runs when is
    plain to see) on a per-test topology, with the tasks of integration/monitor_tasks."""

    def __init__(self, prefix: str, tmp_path: Path, amqp: Any, broker_url: str) -> None:
        self.prefix = prefix
        self.tmp_path = tmp_path
        self.broker_url = broker_url
        self.config = tmp_path / "routing.yaml"
        self.config.write_text(monitor_yaml(prefix, broker_url))
        self.queue = f"{prefix}.work"
        self.stream = f"{prefix}.revoked"
        self.env = {**os.environ, "MONITOR_TEST_CONFIG": str(self.config), "AMQTASK_BROKER_URL": broker_url,
                    "PYTHONPATH": str(ROOT)}
        for name in ("work", "other", "refusing", "full", "work.dead", "other.dead", "revoked"):
            amqp.track("queue", f"{prefix}.{name}")
        for name in ("x", "full.x"):
            amqp.track("exchange", f"{prefix}.{name}")
        os.environ["MONITOR_TEST_CONFIG"] = str(self.config)
        if "integration.monitor_tasks" in sys.modules:
            importlib.reload(sys.modules["integration.monitor_tasks"])
        from integration import monitor_tasks

        self.tasks = monitor_tasks
        self.app = monitor_tasks.app
        assert self.app.publisher.transport.declare(self.app.settings.topology) == []
        self.processes: list[subprocess.Popen] = []
        self.broker = BrokerSettings(urls=parse_broker_urls(broker_url))

    def name(self, suffix: str = "") -> str:
        return f"{self.prefix}{suffix}@monitor-test"

    def start(self, *flags: str, name: str | None = None, wait: bool = True,
              config: Path | None = None) -> subprocess.Popen:
        name = name or self.name()
        log = open(self.tmp_path / f"{name}.{len(self.processes)}.log", "w")
        command = [sys.executable, "-m", "amqtask.cli", "worker", "-A", "integration.monitor_tasks", "--config",
                   str(config or self.config), "-Q", self.queue, "-n", name, "-P", "threads", "-c", "1",
                   *([] if "--processes" in flags else ["--processes", "1"]),
                   "--prefetch-multiplier", "2", *[WORKER_FLAGS.get(f, f) for f in flags]]
        process = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        process.node = name  # type: ignore[attr-defined]
        process.log_path = log.name  # type: ignore[attr-defined]
        process.lines = []  # type: ignore[attr-defined]
        reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        reader.start()
        self.processes.append(process)
        if wait:
            wait_until(lambda: self._ready(process), 60, f"node {name} to be ready")
        return process

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            process.lines.append(line.rstrip("\n"))  # type: ignore[attr-defined]

    def _ready(self, process: subprocess.Popen) -> bool:
        if "consuming from" in self.log(process):
            return True
        if process.poll() is not None:
            raise AssertionError(f"node exited with {process.returncode}:\n{self.log(process)}")
        return False

    def log(self, process: subprocess.Popen) -> str:
        return Path(process.log_path).read_text()  # type: ignore[attr-defined]

    def stop(self, process: subprocess.Popen, timeout: float = 20) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            self.stop(process)
        self.app.close()

    def amqtask(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "amqtask.cli", *args, "--config", str(self.config)],
                              capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=timeout)

    def celery(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "celery", "-A", CELERY_APP, *args], capture_output=True,
                              text=True, env=self.env, cwd=ROOT, timeout=timeout)

    def celery_json(self, kind: str, command: str, *args: str, node: str) -> Any:
        result = self.celery(kind, command, *args, "-d", node, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])


class EventLog:
    """Every event on `celeryev` from the nodes named `hosts`, read in a thread."""

    def __init__(self, broker: BrokerSettings, hosts: set[str]) -> None:
        self.hosts = hosts
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(broker,), daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise AssertionError(f"the event queue was not set up: {self.errors}")

    def _run(self, broker: BrokerSettings) -> None:
        try:
            read_events(broker, self._add, stop=self.stop, wakeup=False, ready=self.ready)
        except BaseException as exc:
            self.errors.append(exc)
            self.ready.set()

    def _add(self, event: dict[str, Any]) -> None:
        if event.get("hostname") in self.hosts:
            self.events.append(event)

    def of(self, kind: str, uuid: str | None = None) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["type"] == kind and (uuid is None or e.get("uuid") == uuid)]

    def wait(self, kind: str, uuid: str | None = None, timeout: float = 30) -> dict[str, Any]:
        return wait_until(lambda: (self.of(kind, uuid) or [None])[-1], timeout, f"{kind} {uuid or ''}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class Flower:
    """Flower 2 started with Celery's CLI against the test broker."""

    def __init__(self, runner: NodeRunner, tmp_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "flower.log"
        log = open(self.log_path, "w")
        env = {**runner.env, "FLOWER_UNAUTHENTICATED_API": "true"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", CELERY_APP, "flower", f"--port={self.port}",
             "--address=127.0.0.1", "--persistent=False", "--inspect_timeout=3000"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, 60, "Flower to answer")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"flower exited:\n{self.log_path.read_text()}")
        try:
            return self.get("/healthcheck", raw=True) == b"OK"
        except OSError:
            return False

    def get(self, path: str, raw: bool = False) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            body = response.read()
        return body if raw else json.loads(body)

    def task(self, task_id: str) -> dict[str, Any]:
        """/api/task/info/<id>, or {} while Flower has no event of that task yet (404)."""
        try:
            return self.get(f"/api/task/info/{task_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {}
            raise

    def post(self, path: str) -> Any:
        request = urllib.request.Request(self.base + path, data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def nodes(prefix, tmp_path, amqp, broker_url):
    runner = NodeRunner(prefix, tmp_path, amqp, broker_url)
    yield runner
    runner.stop_all()


@pytest.fixture
def event_log(nodes):
    log = EventLog(nodes.broker, {nodes.name(), nodes.name("-b")})
    yield log
    log.close()


from .private_broker import PrivateBroker, has_rabbitmq_server  # noqa: E402,F401 - re-exported
