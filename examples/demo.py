"""The quick-start main job: declare routing.yaml, start a worker on the example
tasks, publish tasks that route to different queues, print where each went and
what came back, then stop the worker warmly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amqtask import AmqtaskError, UnroutableError  # noqa: E402
from amqtask.amqp.blocking import BlockingTransport  # noqa: E402
from amqtask.control import ping_workers  # noqa: E402
from examples.tasks import add, app, email, fail, invoice, pdf, render, vacuum  # noqa: E402

QUEUES = "default,web_tasks,audit,pdf_reports,invoices,maintenance"
CALLS = [(add, (2, 3)), (render, ("home",)), (email, ("ops@example.com",)), (invoice, (42,)), (pdf, ("q3",)),
         (vacuum, ()), (fail, ())]
# The worker's log (the failing task logs an error) goes here, not between the table's rows.
WORKER_LOG = Path(tempfile.gettempdir()) / "amqtask-demo-worker.log"


def start_worker() -> subprocess.Popen:
    command = [sys.executable, "-m", "amqtask.cli", "worker", "-A", "examples.tasks", "-Q", QUEUES,
               "-P", "threads", "-c", "4", "-n", f"demo-{os.getpid()}", "-l", "WARNING"]
    with open(WORKER_LOG, "w") as log:
        worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        replies = ping_workers(app.settings.broker, timeout=0.5, destination=f"demo-{os.getpid()}")
        if any(r.get("consuming") for r in replies):
            return worker
        if worker.poll() is not None:
            raise AmqtaskError(f"the worker exited with status {worker.returncode}:\n{_log_tail()}")
    worker.kill()
    raise AmqtaskError(f"the worker did not start consuming within 30s:\n{_log_tail()}")


def _log_tail() -> str:
    return "\n".join(WORKER_LOG.read_text(errors="replace").splitlines()[-20:])


def main() -> int:
    print(f"broker: {app.settings.broker.urls[0].redacted()}")
    with BlockingTransport(app.settings.broker) as transport:
        conflicts = transport.declare(app.settings.topology)
    for conflict in conflicts:
        print(f"conflict: {conflict}", file=sys.stderr)
    t = app.settings.topology
    print(f"declared {len(t.exchanges)} exchanges, {len(t.queues)} queues, {len(t.bindings)} bindings")
    worker = start_worker()
    print(f"worker started (pid {worker.pid}) on {QUEUES}\n")
    try:
        results = [(task, task.delay(*args)) for task, args in CALLS]
        try:
            add.apply_async((1, 1), routing_key="zz.nowhere")
            refused = "(not refused!)"
        except UnroutableError as exc:
            refused = str(exc)
        print(f"{'TASK':26} {'EXCHANGE':10} {'ROUTING KEY':13} {'QUEUE':12} {'STATE':8} RESULT")
        ok = True
        for task, result in results:
            try:
                value = repr(result.get(timeout=30))
            except AmqtaskError as exc:
                value = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # the task's own exception, re-raised by get()
                value = f"raised {type(exc).__name__}: {exc}"
            d = result.destination
            queues = ", ".join(sorted(t.route(d.exchange, d.routing_key, d.headers)))
            expected = "FAILURE" if task is fail else "SUCCESS"
            ok = ok and result.state == expected
            print(f"{task.name:26} {d.exchange or '(default)':10} {d.routing_key:13} {queues:12} "
                  f"{result.state:8} {value}")
        print(f"\nrefused at publish time: {refused}")
        print("the failed task was dead-lettered to default.dead with header x-amqtask-reason")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        app.close()
    print(f"worker stopped warmly (exit status {code}); its log: {WORKER_LOG}")
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AmqtaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
