"""The quick-start main job: declare routing.yaml, start a worker and a beat on the
example tasks, publish tasks that route to different queues, print where each went
and what came back, read one result again from a second process, show the dead
letter and a periodic schedule firing, then stop both warmly and delete what the
run created beyond what it showed (what the worker declares beyond routing.yaml: the
other dead-letter queues and the delay cascades; and the beat's queues), when it was
not there before and is empty (the beat's: when no other beat uses them)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amqtask import AmqtaskError, UnroutableError  # noqa: E402
from amqtask.amqp.beat_lock import read_status, status_queue, token_queue  # noqa: E402
from amqtask.amqp.blocking import BlockingTransport  # noqa: E402
from amqtask.amqp.deadletters import PikaDeadLetters  # noqa: E402
from amqtask.beat.state import BeatState, format_instant, scheduled_task_id  # noqa: E402
from amqtask.control import ping_workers  # noqa: E402
from amqtask.deadletters import list_letters, targets  # noqa: E402
from amqtask.topology.model import Queue, Topology  # noqa: E402
from amqtask.worker.worker import consumed_topology  # noqa: E402
from examples.tasks import add, app, email, fail, invoice, pdf, render, vacuum  # noqa: E402

QUEUES = "default,web_tasks,audit,pdf_reports,invoices,maintenance"
SHOWN_DEAD_QUEUE = "default.dead"  # where the failing task's dead letter is shown
CALLS = [(add, (2, 3)), (render, ("home",)), (email, ("ops@example.com",)), (invoice, (42,)), (pdf, ("q3",)),
         (vacuum, ()), (fail, ())]
SCHEDULE = "add-every-10s"  # routing.yaml: projq.tasks.add(16, 16) every 10s
NAME = f"demo-{os.getpid()}@localhost"


def start_worker(log_path: Path) -> subprocess.Popen:
    """The worker's log (the failing task logs an error) goes to `log_path`, not between the table's rows."""
    command = [sys.executable, "-m", "amqtask.cli", "worker", "-A", "examples.tasks", "-Q", QUEUES,
               "-n", NAME, "-l", "WARNING"]  # the defaults: a process per CPU, each named NAME with its index
    with open(log_path, "w") as log:
        worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        replies = ping_workers(app.settings.broker, timeout=0.5)
        short, host = NAME.split("@")
        if any(r.get("consuming") and r["hostname"].startswith(short) and r["hostname"].endswith(f"@{host}")
               for r in replies):
            return worker
        if worker.poll() is not None:
            raise AmqtaskError(f"the worker exited with status {worker.returncode}:\n{_log_tail(log_path)}")
    worker.kill()
    raise AmqtaskError(f"the worker did not start consuming within 30s:\n{_log_tail(log_path)}")


def start_beat(log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "amqtask.cli", "beat", "-A", "examples.tasks", "-n", NAME]
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_for_schedule(since: datetime, log_path: Path, timeout: float = 30) -> str:
    """The line saying the schedule fired: a run at or after `since`, per the beat's state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [BeatState.decode(b) for b in read_status(app.settings.broker, app.settings.beat.group).bodies]
        known = max(states, key=lambda s: s.seq).entries.get(SCHEDULE) if states else None
        if known is not None and known.last_run is not None and known.last_run >= since:
            leader = max(states, key=lambda s: s.seq).leader
            return (f"schedule {SCHEDULE} fired: beat {leader} sent projq.tasks.add(16, 16) for "
                    f"{format_instant(known.last_run)}, task id {scheduled_task_id(SCHEDULE, known.last_run)}")
        time.sleep(0.2)
    return f"schedule {SCHEDULE} did not fire within {timeout:g}s (see {log_path})"


def read_in_another_process(task_id: str) -> str:
    """AsyncResult(task_id) in a fresh Python process: results live in the backend
    (routing.yaml: Redis), not with the process that sent the task."""
    code = ("import sys\nfrom amqtask import App\nfrom amqtask.results import AsyncResult\n"
            "r = AsyncResult(sys.argv[1], app=App('reader', config='routing.yaml'))\n"
            "print(r.state, r.get(timeout=10))\n")
    done = subprocess.run([sys.executable, "-c", code, task_id], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"(the second process could not read it: {done.stderr.strip().splitlines()[-1:]})"
    return f"a second process read the result of {task_id} from the backend: {done.stdout.strip()}"


def _log_tail(log_path: Path) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])


@dataclass(frozen=True)
class Created:
    """What this run declares beyond what it shows, and which of it was not there
    before it started: only that is deleted at the end."""

    queues: list[Queue]
    exchanges: list[str]
    state_queues: list[str]

    def __bool__(self) -> bool:
        return bool(self.queues or self.exchanges or self.state_queues)


def beyond_what_is_shown() -> tuple[list[Queue], list[str]]:
    """(queues, exchanges) the worker declares for QUEUES beyond routing.yaml, as the
    worker decides it (the dead-letter queues of its queues, the delay cascade of
    each queue's type), except the dead-letter queue the demo shows."""
    topology = app.settings.topology
    plan = consumed_topology(topology, tuple(QUEUES.split(",")))
    queues = [q for q in plan.queues.values() if q.name not in topology.queues and q.name != SHOWN_DEAD_QUEUE]
    return queues, [x for x in plan.exchanges if x not in topology.exchanges]


def state_queues() -> dict[str, str]:
    """Queues that keep the state of this run's beat and worker after they stop (the
    beat's token and status, the revocation stream), each -> the queue whose
    consumers say another beat or worker uses it."""
    group = app.settings.beat.group
    used = {token_queue(group): token_queue(group), status_queue(group): token_queue(group)}
    revoked = app.settings.worker.monitor.revoked_stream
    return {**used, revoked: revoked} if revoked else used


def absent(transport: BlockingTransport) -> Created:
    """What of beyond_what_is_shown() and state_queues() does not exist yet."""
    queues, exchanges = beyond_what_is_shown()
    return Created([q for q in queues if transport.queue_stats(q.name) is None],
                   [x for x in exchanges if not transport.exchange_exists(x)],
                   [q for q in state_queues() if transport.queue_stats(q) is None])


def clean_up(transport: BlockingTransport, created: Created) -> list[str]:
    """Delete what this run created; a queue that holds messages is kept and named,
    and then the exchanges too (a message waiting in a delay queue needs them). A
    state queue holds only this run's state: it goes unless another beat or worker
    has started using it meanwhile."""
    kept = [queue.name for queue in created.queues if not delete_if_empty(transport, queue)]
    for exchange in created.exchanges if not kept else []:
        transport.delete_exchange(exchange)
    users = state_queues()
    for name in created.state_queues:
        stats = transport.queue_stats(users[name])
        if stats is not None and stats.consumers:
            kept.append(name)
        else:
            transport.delete_queue(name)
    return kept


def delete_if_empty(transport: BlockingTransport, queue: Queue) -> bool:
    """False when `queue` holds messages and stays. A quorum queue refuses delete's
    if-empty flag (the broker closes the connection), so it is counted first."""
    if queue.queue_type != "quorum":
        try:
            transport.delete_queue(queue.name, if_empty=True)
            return True
        except AmqtaskError:
            return False
    stats = transport.queue_stats(queue.name)
    if stats is not None and stats.messages:
        return False
    transport.delete_queue(queue.name)
    return True


def show_dead_letter(task_id: str) -> str:
    """The failed task's dead letter, read back without taking it away."""
    with PikaDeadLetters(app.settings.broker) as broker:
        [target] = targets(app.settings.topology, SHOWN_DEAD_QUEUE)
        letters = list_letters(broker, target).letters
    mine = [letter for letter in letters if letter.task_id == task_id]
    if not mine:
        return f"(no dead letter for {task_id} in {SHOWN_DEAD_QUEUE}!)"
    return (f"{SHOWN_DEAD_QUEUE} holds {len(letters)} dead letter{'s' * (len(letters) != 1)}; this run's: "
            f"{mine[0].task} {mine[0].task_id}: {mine[0].reason}")


def main() -> int:
    print(f"broker: {app.settings.broker.urls[0].redacted()}")
    with BlockingTransport(app.settings.broker) as transport:
        created = absent(transport)
        conflicts = transport.declare(app.settings.topology)
    for conflict in conflicts:
        print(f"conflict: {conflict}", file=sys.stderr)
    t = app.settings.topology
    print(f"declared {len(t.exchanges)} exchanges, {len(t.queues)} queues, {len(t.bindings)} bindings")
    log_path, beat_log = _temporary_log("worker"), _temporary_log("beat")
    worker = start_worker(log_path)
    started = datetime.now(timezone.utc)
    beat = start_beat(beat_log)
    print(f"worker started (pid {worker.pid}) on {QUEUES}; beat started (pid {beat.pid})\n")
    try:
        ok, failed_id, added_id = run_tasks(t)
        print(read_in_another_process(added_id))
        print(show_dead_letter(failed_id))
        print("  (amqtask dead ls, amqtask dead show ID, amqtask dead requeue, amqtask dead purge)")
        fired = wait_for_schedule(started, beat_log)
        print(fired)
        ok = ok and "fired:" in fired
    finally:
        beat.send_signal(signal.SIGTERM)
        beat_code = beat.wait(timeout=60)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        app.close()
        with BlockingTransport(app.settings.broker) as transport:
            kept = clean_up(transport, created)
    print(f"beat and worker stopped warmly (exit status {beat_code}, {code}); logs: {beat_log}, {log_path}")
    if created:
        queues = len(created.queues) + len(created.state_queues)
        exchanges = 0 if set(kept) & {q.name for q in created.queues} else len(created.exchanges)
        print(f"deleted what this run created and did not show: {queues - len(kept)} queues, {exchanges} "
              "exchanges" + (f" (kept, in use: {', '.join(kept)})" if kept else ""))
    return 0 if ok and code == 0 and beat_code == 0 else 1


def _temporary_log(what: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f"amqtask-demo-{what}-", suffix=".log")
    os.close(handle)
    return Path(name)


def run_tasks(t: Topology) -> tuple[bool, str, str]:
    """Publish CALLS, print the table; (every state as expected, the failing task's
    id, the first task's id)."""
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
    failed_id = next(result.id for task, result in results if task is fail)
    return ok, failed_id, results[0][1].id


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AmqtaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
