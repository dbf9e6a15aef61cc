"""The paths of a real `amqtask worker` that only builder unit tests covered: the
task-retried and task-rejected events, revoke with terminate on a prefork pool,
and the metrics of acks, publish confirms and nacks, and reconnects."""
from __future__ import annotations

import json
import signal

from .monitoring import event_log, free_port, monitor_yaml, nodes, wait_until  # noqa: F401 - fixtures
from .test_monitoring_metrics import sample, scrape


def test_retried_rejected_and_refused_dead_letters_in_events_and_metrics(nodes, event_log):
    port = free_port()
    node = nodes.start("--events", "--metrics-port", str(port), "-Q", f"{nodes.queue},{nodes.prefix}.refusing")

    def acked(count: int) -> dict:
        # the ack is counted just after the task's last event: wait for the scrape to show it
        return wait_until(lambda: (s := scrape(port)) and sample(s, "amqtask_acks_total") == count and s, 30,
                          f"{count} acks in the metrics")

    # one at a time, each waited for until acked, so that no two tasks share an ack frame
    flaky = nodes.tasks.flaky.delay()
    assert event_log.wait("task-succeeded", flaky.id)["result"] == "1"
    retried = event_log.of("task-retried", flaky.id)
    # as Celery's: the exception the task retried for, and the traceback of its retry() call
    assert [(e["exception"], "in flaky" in e["traceback"], "Retry" in e["traceback"].splitlines()[-1])
            for e in retried] == [("KeyError('first try')", True, True)]
    assert [e["retries"] for e in event_log.of("task-received", flaky.id)] == [0, 1]
    # its two acks may share a frame: the retry can run before the first attempt's ack is due
    frames = sample(acked(2), "amqtask_ack_frames_total")
    assert frames in (1, 2)

    rejected = nodes.tasks.reject.delay()
    assert event_log.wait("task-rejected", rejected.id)["requeue"] is False
    assert event_log.of("task-failed", rejected.id) == [] and event_log.of("task-succeeded", rejected.id) == []
    acked(3)

    # a dead letter the broker refuses (nack): its task ran, so the message is acked and dropped, never run again
    refused = nodes.tasks.fail.apply_async(routing_key="refusing")
    event_log.wait("task-failed", refused.id)
    samples = acked(4)
    assert sample(samples, "amqtask_ack_frames_total") == frames + 2  # one ack each: nothing to batch
    # every try is counted: a nacked publish is sent again on a new channel, publish_retries (3) times
    assert sample(samples, "amqtask_publish_nacks_total") == 1 + 3
    assert sample(samples, "amqtask_publish_confirms_total") == 2  # the retry, and the rejected task's dead letter
    assert sample(samples, "amqtask_publish_returns_total") == 0
    assert sample(samples, "amqtask_tasks_total", task="m.flaky", state="retried") == 1
    assert sample(samples, "amqtask_tasks_total", task="m.flaky", state="succeeded") == 1
    assert sample(samples, "amqtask_tasks_total", task="m.reject", state="rejected") == 1
    assert sample(samples, "amqtask_tasks_total", task="m.fail", state="failed") == 1
    assert len(event_log.of("task-failed", refused.id)) == 1
    assert f"message {refused.id} from {nodes.prefix}.refusing dropped" in nodes.log(node)
    assert nodes.stop(node) == 0


def test_revoke_with_terminate_stops_the_task_in_its_prefork_child(nodes, event_log, amqp):
    node = nodes.start("--events", "-P", "prefork")
    name = node.node
    running = nodes.tasks.block.delay(str(nodes.tmp_path / "never"))
    event_log.wait("task-started", running.id)
    [child] = nodes.celery_json("inspect", "active", node=name)[name]
    assert child["id"] == running.id and child["worker_pid"] != node.pid

    revoke = nodes.celery("control", "terminate", "KILL", running.id, "-d", name)  # Celery's revoke --terminate
    assert revoke.returncode == 0 and f"terminate: {running.id}" in revoke.stdout
    revoked = event_log.wait("task-revoked", running.id)
    assert (revoked["terminated"], revoked["signum"], revoked["expired"]) == (True, int(signal.SIGKILL), False)

    after = nodes.tasks.add.delay(2, 2)  # a new child runs the next task
    assert event_log.wait("task-succeeded", after.id)["result"] == "4"
    assert [e["type"] for e in event_log.events if e.get("uuid") == running.id] == \
        ["task-received", "task-started", "task-revoked"]
    assert nodes.stop(node) == 0
    assert amqp.queue_declare(nodes.queue, passive=True).method.message_count == 0  # acked, not back in the queue


def test_revoke_with_terminate_and_the_default_signal_stops_the_task(nodes, event_log):
    """Prefork children ignore SIGTERM (a TERM to the whole process group must not
    kill tasks), so the pool delivers the TERM a revoke asks for as KILL."""
    node = nodes.start("--events", "-P", "prefork")
    release = nodes.tmp_path / "release"
    running = nodes.tasks.block.delay(str(release))
    event_log.wait("task-started", running.id)
    try:
        revoke = nodes.amqtask("control", "revoke", running.id, "--terminate", "-d", node.node)  # signal TERM
        assert revoke.returncode == 0 and f"terminate: {running.id}" in revoke.stdout
        wait_until(lambda: json.loads(nodes.amqtask("inspect", "active", "-d", node.node, "--json").stdout)[
            node.node] == [], 10, "the task to stop")
    finally:
        release.touch()  # whatever happened, the worker can stop at once


def test_a_reconnect_is_counted(nodes, event_log, proxy, tmp_path):
    port = free_port()
    config = tmp_path / "proxied.yaml"
    config.write_text(monitor_yaml(nodes.prefix, f"amqp://guest:guest@127.0.0.1:{proxy.port}//"))
    nodes.start("--events", "--metrics-port", str(port), config=config)
    assert sample(scrape(port), "amqtask_reconnects_total") == 0
    proxy.cut()
    wait_until(lambda: sample(scrape(port), "amqtask_reconnects_total") >= 1, 60, "the reconnect to be counted")
    after = nodes.tasks.add.delay(5, 5)
    assert event_log.wait("task-succeeded", after.id)["result"] == "10"
    assert sample(scrape(port), "amqtask_reconnects_total") == 1  # one cut, one reconnect
