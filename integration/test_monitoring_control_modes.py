"""What `worker.control` lets through, against real `amqtask worker` processes: a
Celery mingle `hello` under read-only and all (sent with Celery's own
`app.control.broadcast`), the node name lock with control off, and the commands of
amqtask's CLI that only read or only ask for an event."""
from __future__ import annotations

import json
import subprocess

from celery import Celery

from .monitoring import event_log, nodes, wait_until  # noqa: F401 - fixtures


def hello(nodes, node: str, revoked) -> list[dict]:
    """Celery's mingle request, from an arbitrary sender, as Celery's client sends it."""
    with Celery("hello-sender", broker=nodes.broker_url) as sender:
        return sender.control.broadcast("hello", arguments={"from_node": "x@y", "revoked": revoked},
                                        destination=[node], reply=True, timeout=5)


def revoked_ids(nodes, node: str) -> list[str]:
    result = nodes.amqtask("inspect", "revoked", "-d", node, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)[node]


def test_hello_changes_nothing_under_read_only_and_merges_what_it_offers_under_all(nodes):
    node = nodes.start("--control", "read-only")
    name = node.node
    [reply] = hello(nodes, name, {"evil-id": 0})
    assert list(reply) == [name] and reply[name]["revoked"] == [] and isinstance(reply[name]["clock"], int)
    assert revoked_ids(nodes, name) == []
    wait_until(lambda: "control command hello(from_node='x@y', revoked={'evil-id': 0}) from reply address "
                       "reply.celery.pidbox/" in nodes.log(node), 30, "the hello in the log")
    assert "1 revoked id(s) offered by 'x@y' not merged: worker.control is read-only" in nodes.log(node)
    assert nodes.stop(node) == 0

    # a worker of the same name, starting later, finds nothing of it in the revoked stream
    node = nodes.start()
    assert revoked_ids(nodes, name) == []
    offered = [f"{nodes.prefix}-mingled-{n}" for n in range(1500)]  # more than one stream entry holds
    [reply] = hello(nodes, name, offered)
    assert reply[name]["revoked"] == offered
    wait_until(lambda: "merged 1500 revoked id(s) from 'x@y'" in nodes.log(node), 30, "the merge in the log")
    assert nodes.stop(node) == 0
    node = nodes.start()
    assert revoked_ids(nodes, name) == offered


def consumers_of(queue: str) -> int | None:
    """How many consumers RabbitMQ counts on `queue`; None when there is no such queue."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "consumers"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for line in out.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    return None


def test_control_off_still_refuses_a_second_worker_with_the_same_name(nodes):
    first = nodes.start("--control", "off")
    for flags in (("--control", "off"), ("--control", "all")):
        second = nodes.start(*flags, name=first.node, wait=False)
        assert second.wait(60) == 1
        assert f"a worker named '{first.node}' is already running on this broker" in nodes.log(second)
    # the lock is held by a consumer (an idle queue with Celery's x-expires would go in 10 s)
    assert consumers_of(f"{first.node}.celery.pidbox") == 1
    ping = nodes.celery("inspect", "ping", "-d", first.node)  # and still nothing answers
    assert ping.returncode != 0 and "No nodes replied" in ping.stderr + ping.stdout
    assert first.poll() is None


def test_amqtask_heartbeat_clock_and_query_task(nodes, event_log):
    node = nodes.start("--control", "read-only", "--heartbeat-interval", "60")  # all three are allowed there
    name = node.node
    event_log.wait("worker-online")
    beat = nodes.amqtask("control", "heartbeat", "-d", name)
    assert beat.returncode == 0 and beat.stdout.splitlines() == [f"{name}: heartbeat requested"]
    event_log.wait("worker-heartbeat")  # at once, not 60 s later

    clock = nodes.amqtask("inspect", "clock", "-d", name, "--json")
    assert clock.returncode == 0 and json.loads(clock.stdout)[name]["clock"] > 0
    table = nodes.amqtask("inspect", "clock", "-d", name).stdout.splitlines()
    assert table[0].split() == ["WORKER", "CLOCK"] and table[1].split()[0] == name

    release = nodes.tmp_path / "release"
    running = nodes.tasks.block.delay(str(release))
    waiting = nodes.tasks.add.delay(1, 2)  # one slot: it waits behind the running one
    found = wait_until(lambda: (r := nodes.amqtask("inspect", "query_task", running.id, waiting.id, "nope", "-d",
                                                   name, "--json")).returncode == 0
                       and len(json.loads(r.stdout)[name]) == 2 and json.loads(r.stdout)[name], 30,
                       "both tasks in query_task")
    assert {task_id: state for task_id, (state, _) in found.items()} == {running.id: "active", waiting.id: "reserved"}
    assert found[running.id][1]["name"] == "m.block" and found[running.id][1]["hostname"] == name
    rows = [line.split()[:4] for line in nodes.amqtask("inspect", "query_task", running.id, "-d", name)
            .stdout.splitlines()]
    assert rows == [["WORKER", "ID", "STATE", "TASK"], [name, running.id, "active", "m.block"]]
    release.touch()
