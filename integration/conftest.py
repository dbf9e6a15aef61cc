"""Fixtures for tests against a real RabbitMQ (127.0.0.1:5672, or $AMQTASK_BROKER_URL).

Every test uses its own uniquely named exchanges and queues and deletes them
afterwards: the broker is shared with other test runs."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pika
import pytest

from amqtask.amqp.params import pika_parameters
from amqtask.brokerurl import parse_broker_urls
from amqtask.settings import BrokerSettings

from .proxy import TcpProxy

BROKER_URL = os.environ.get("AMQTASK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Results are off unless configured; the test topologies read results over the broker.
RESULTS_YAML = "results: {backend: 'rpc://'}\n"
ROOT = Path(__file__).resolve().parent.parent


def connect(url: str = BROKER_URL) -> pika.BlockingConnection:
    """A raw connection for test inspection, named so tests that close amqtask's
    own connections on the broker side can tell them apart."""
    return pika.BlockingConnection(pika_parameters(BrokerSettings(urls=parse_broker_urls(url)), "test-inspector"))


def _broker_answers() -> str | None:
    try:
        connect().close()
        return None
    except Exception as exc:  # any failure means "no usable broker"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def broker_url() -> str:
    problem = _broker_answers()
    if problem:
        message = f"RabbitMQ is not reachable at {parse_broker_urls(BROKER_URL)[0].redacted()} ({problem})"
        if os.environ.get("CI"):
            pytest.fail(message + "; in CI the broker is required")
        pytest.skip(message + "; start it with `rabbitmq-server -detached` (in CI this fails instead)")
    return BROKER_URL


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def amqp(broker_url):
    """A raw pika channel for inspecting and cleaning up; deletes what `track` registered."""
    connection = connect(broker_url)
    channel = connection.channel()
    created: dict[str, set[str]] = {"queue": set(), "exchange": set()}
    channel.track = lambda kind, name: created[kind].add(name)  # type: ignore[attr-defined]
    yield channel
    try:
        cleanup = connection.channel()
    except (pika.exceptions.AMQPError, OSError):  # e.g. the test restarted the broker
        cleanup = connect(broker_url).channel()
    for q in created["queue"]:
        cleanup.queue_delete(q)
    for x in created["exchange"]:
        cleanup.exchange_delete(x)
    cleanup.connection.close()
    if connection.is_open and cleanup.connection is not connection:
        try:
            connection.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


@pytest.fixture
def proxy():
    url = parse_broker_urls(BROKER_URL)[0]
    p = TcpProxy(url.host, url.port).start()
    yield p
    p.stop()


def drain(channel, queue: str) -> list[tuple]:
    """Every message currently in `queue`, as (method, properties, body), acknowledged."""
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


def topology_yaml(prefix: str, url: str = "${AMQTASK_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}") -> str:
    """The README's minimal routing.yaml with every name made unique by `prefix`."""
    return f"""\
broker:
  url: {url}
  publish_timeout: 5
{RESULTS_YAML}defaults:
  exchange: {prefix}.tasks
  queue: {prefix}.default
  routing_key: task.default
exchanges:
  {prefix}.tasks: {{type: topic, auto_delete: false}}
  {prefix}.broadcast: {{type: fanout}}
queues:
  {prefix}.default:
    bindings:
      - {{exchange: {prefix}.tasks, routing_key: "task.#"}}
  {prefix}.web_tasks:
    bindings:
      - {{exchange: {prefix}.tasks, routing_key: "web.#"}}
    max_priority: 10
  {prefix}.audit:
    bindings:
      - {{exchange: {prefix}.broadcast}}
  {prefix}.small:
    max_length: 1
    overflow: reject-publish
routes:
  - task: projq.tasks.add
    routing_key: web.add
  - task: "projq.web.*"
    routing_key: web.misc
  - task: "projq.notify.*"
    exchange: {prefix}.broadcast
"""


def track_topology(channel, prefix: str) -> None:
    for x in ("tasks", "broadcast"):
        channel.track("exchange", f"{prefix}.{x}")
    for q in ("default", "web_tasks", "audit", "small"):
        channel.track("queue", f"{prefix}.{q}")


def worker_yaml(prefix: str, url: str = "${AMQTASK_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}",
                queue_options: str = "") -> str:
    """A topology for worker tests: a direct exchange and two queues; `queue_options`
    (YAML lines, e.g. "queue_type: quorum") apply to both."""
    options = "".join(f"    {line}\n" for line in queue_options.splitlines())
    return f"""\
broker:
  url: {url}
  publish_timeout: 5
{RESULTS_YAML}defaults:
  exchange: {prefix}.x
  routing_key: work
exchanges:
  {prefix}.x: {{type: direct}}
queues:
  {prefix}.work:
{options}    bindings:
      - {{exchange: {prefix}.x, routing_key: work}}
  {prefix}.other:
{options}    bindings:
      - {{exchange: {prefix}.x, routing_key: other}}
routes:
  - task: t.unrated
    routing_key: other
"""


class WorkerHarness:
    """Runs `amqtask worker` processes on a per-test topology and records what ran."""

    def __init__(self, prefix: str, tmp_path: Path, amqp, url: str | None = None, results: str | None = None,
                 queue_options: str = "") -> None:
        import json as _json

        self._json = _json
        self.prefix = prefix
        self.config = tmp_path / "routing.yaml"
        text = worker_yaml(prefix, url, queue_options) if url else worker_yaml(prefix, queue_options=queue_options)
        if results is not None:  # another results section, e.g. a Redis backend
            text = text.replace(RESULTS_YAML, results)
        self.config.write_text(text)
        self.record_file = tmp_path / "record.jsonl"
        self.record_file.touch()
        self.queue = f"{prefix}.work"
        self.processes: list = []
        self.env = {**os.environ, "WORKER_TEST_CONFIG": str(self.config),
                    "WORKER_TEST_RECORD": str(self.record_file), "PYTHONPATH": str(ROOT)}
        for name in ("work", "other", "work.dead", "other.dead"):
            amqp.track("queue", f"{prefix}.{name}")
        amqp.track("exchange", f"{prefix}.x")
        os.environ["WORKER_TEST_CONFIG"] = str(self.config)
        os.environ["WORKER_TEST_RECORD"] = str(self.record_file)
        import importlib
        import sys as _sys

        if "integration.worker_app" in _sys.modules:
            importlib.reload(_sys.modules["integration.worker_app"])
        from integration import worker_app

        self.module = worker_app
        self.app = worker_app.app

    def declare(self) -> None:
        """Create the test topology before any worker runs (to queue work up front)."""
        assert self.app.publisher.transport.declare(self.app.settings.topology) == []

    def start(self, *flags: str, name: str | None = None, wait: bool = True, new_session: bool = False):
        import subprocess
        import sys as _sys

        name = name or f"{self.prefix}-{len(self.processes)}"
        if "@" not in name:  # as Celery, a name without '@' would become amqtask@NAME
            name = f"{name}@localhost"
        # One prefork process unless a test says otherwise: most tests are about one
        # process's behaviour. "--defaults": amqtask's own (a process per CPU, threads).
        defaults = [] if "--defaults" in flags else [*([] if "--processes" in flags else ["--processes", "1"]),
                                                     *([] if "-P" in flags else ["-P", "prefork"])]
        command = [_sys.executable, "-m", "amqtask.cli", "worker", "-A", "integration.worker_app",
                   "-Q", self.queue + ("," + f"{self.prefix}.other" if "--both" in flags else ""),
                   "-n", name, *defaults, *[f for f in flags if f not in ("--both", "--defaults")]]
        log = open(self.record_file.parent / f"{name}.log", "w")
        process = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=new_session)
        process.name = name  # type: ignore[attr-defined]
        process.log_path = log.name  # type: ignore[attr-defined]
        # Under --processes N each process is "<short>-<i>@host" (as Celery's %I).
        if "--defaults" in flags:
            from amqtask.worker.sizing import cpus, size

            process.count = size("threads", concurrency=None, processes="auto", cpu_count=cpus()).processes  # type: ignore[attr-defined]
        else:
            process.count = int(flags[flags.index("--processes") + 1]) if "--processes" in flags else 1  # type: ignore[attr-defined]
        self.processes.append(process)
        if wait:
            self.wait_consuming(process)
        return process

    def wait_consuming(self, process, timeout: float = 30.0) -> None:
        import time as _time


        deadline = _time.monotonic() + timeout
        while _time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"worker exited with {process.returncode}:\n{self.output(process)}")
            count = getattr(process, "count", 1)
            if sum(1 for r in self.pings(process) if r.get("consuming")) >= count:
                return
        raise AssertionError(f"worker did not start consuming:\n{self.output(process)}")

    def pings(self, process, timeout: float = 0.3) -> list[dict]:
        """The ping replies of a worker started here (of each of its --processes)."""
        from amqtask.control import ping_workers

        if getattr(process, "count", 1) == 1:
            return ping_workers(self.app.settings.broker, timeout=timeout, destination=process.name)
        short, _, host = process.name.partition("@")
        return [r for r in ping_workers(self.app.settings.broker, timeout=timeout)
                if r.get("hostname", "").startswith(f"{short}-") and r["hostname"].endswith(f"@{host}")]

    def output(self, process) -> str:
        return Path(process.log_path).read_text()

    def records(self, event: str | None = None) -> list[dict]:
        lines = self.record_file.read_text().splitlines()
        out = [self._json.loads(line) for line in lines if line.strip()]
        return [r for r in out if event is None or r.get("event") == event]

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition") -> None:
        import time as _time

        deadline = _time.monotonic() + timeout
        while _time.monotonic() < deadline:
            if predicate():
                return
            _time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; records: {self.records()[-10:]}")

    def stop_all(self) -> None:
        import signal as _signal

        for process in self.processes:
            if process.poll() is None:
                process.send_signal(_signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except Exception:
                process.kill()
                process.wait()
        self.app.close()


@pytest.fixture
def harness(prefix, tmp_path, amqp, broker_url):
    h = WorkerHarness(prefix, tmp_path, amqp)
    yield h
    h.stop_all()


def unacked(queue: str) -> int:
    """messages_unacknowledged for `queue`, as RabbitMQ reports it."""
    import subprocess

    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
                         capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    return 0


from .private_broker import private_broker  # noqa: E402,F401 - a session fixture: a RabbitMQ node of our own
