"""Prometheus metrics scraped over HTTP from `amqtask worker`: after a known sequence
of tasks, and from one endpoint serving several processes (prometheus-client's
multiprocess mode) while one of them is killed and replaced."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .monitoring import event_log, free_port, nodes, wait_until  # noqa: F401 - fixtures


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_after_a_known_sequence_of_tasks(nodes, event_log):
    port = free_port()
    node = nodes.start("--events", "--metrics-port", str(port))
    revoked_id = f"{nodes.prefix}-revoked"
    assert nodes.amqtask("control", "revoke", revoked_id, "-d", node.node).returncode == 0
    results = [nodes.tasks.add.delay(i, i) for i in range(3)]
    failed = nodes.tasks.fail.delay()
    nodes.tasks.add.apply_async((0, 0), task_id=revoked_id)
    for r in results:
        event_log.wait("task-succeeded", r.id)
    event_log.wait("task-failed", failed.id)
    event_log.wait("task-revoked", revoked_id)
    # the last ack is counted just after the event: wait for the scrape to show all five
    samples = wait_until(lambda: (s := scrape(port)) and sample(s, "amqtask_acks_total") == 5 and s, 30,
                         "five acks in the metrics")
    assert sample(samples, "amqtask_tasks_total", task="m.add", state="received") == 3
    assert sample(samples, "amqtask_tasks_total", task="m.add", state="started") == 3
    assert sample(samples, "amqtask_tasks_total", task="m.add", state="succeeded") == 3
    assert sample(samples, "amqtask_tasks_total", task="m.add", state="revoked") == 1
    assert sample(samples, "amqtask_tasks_total", task="m.fail", state="failed") == 1
    assert sample(samples, "amqtask_task_runtime_seconds_count", task="m.add") == 3
    assert sample(samples, "amqtask_task_runtime_seconds_count", task="m.fail") == 1
    assert sample(samples, "amqtask_dead_letters_total", reason="failed") == 1
    assert sample(samples, "amqtask_prefetch_window") == 2
    assert sample(samples, "amqtask_tasks_in_flight") == 0
    assert sample(samples, "amqtask_events_dropped_total", reason="buffer_full") is None


def test_one_endpoint_sums_every_process_and_keeps_the_counts_of_a_replaced_one(nodes):
    """`amqtask worker --processes 3 --metrics-port P`: the supervisor serves the sums
    of every process (prometheus-client's multiprocess mode); a process killed and
    replaced keeps its counts in the totals."""
    port = free_port()
    supervisor = nodes.start("--processes", "3", "--metrics-port", str(port), name=f"{nodes.prefix}@metrics",
                             wait=False)
    wait_until(lambda: nodes.log(supervisor).count("consuming from") == 3, 60, "three consuming processes")
    for i in range(12):
        nodes.tasks.add.delay(i, i)
    wait_until(lambda: sample(scrape(port), "amqtask_tasks_total", task="m.add", state="succeeded") == 12, 60,
               "twelve tasks counted")
    assert sample(scrape(port), "amqtask_task_runtime_seconds_count", task="m.add") == 12
    assert sample(scrape(port), "amqtask_prefetch_window") == 3 * 2  # three live processes, window 2 each
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(supervisor.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert len(children) == 3
    os.kill(children[0], signal.SIGKILL)
    wait_until(lambda: nodes.log(supervisor).count("consuming from") == 4, 60, "the replacement to consume")
    nodes.tasks.add.delay(1, 1)
    samples = wait_until(lambda: (s := scrape(port)) and sample(s, "amqtask_tasks_total", task="m.add",
                                                                    state="succeeded") == 13 and s, 60,
                         "the replacement's task counted too")
    assert sample(samples, "amqtask_pool_children_replaced_total") == 1
    assert sample(samples, "amqtask_prefetch_window") == 3 * 2  # the killed process's gauge left with it
    assert nodes.stop(supervisor) == 0


def test_a_prefork_child_killed_and_replaced_is_counted(nodes):
    """Before: the prefork pool kept its own count and only `--processes` reported one."""
    port = free_port()
    node = nodes.start("-P", "prefork", "--metrics-port", str(port))

    def children() -> list[int]:
        stats = json.loads(nodes.amqtask("inspect", "stats", "-d", node.node, "--json").stdout)
        return stats[node.node]["pool"]["processes"]

    [child] = children()
    assert child != node.pid and sample(scrape(port), "amqtask_pool_children_replaced_total") == 0
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: children() not in ([], [child]), 30, "a new child")
    assert sample(scrape(port), "amqtask_pool_children_replaced_total") == 1
    nodes.tasks.add.delay(2, 3)
    wait_until(lambda: sample(scrape(port), "amqtask_tasks_total", task="m.add", state="succeeded") == 1, 30,
               "the new child to run a task")
    assert nodes.stop(node) == 0
