"""Celery 5's own CLI (`celery inspect`, `celery control`) against
`amqtask worker` processes, on the real broker."""
from __future__ import annotations

import signal

from .monitoring import event_log, nodes, wait_until  # noqa: F401 - fixtures


def test_celery_inspect_ping_stats_registered_active_queues(nodes):
    node = nodes.start()
    name = node.node
    assert nodes.celery_json("inspect", "ping", node=name) == {name: {"ok": "pong"}}
    status = nodes.celery("status", "-d", name)
    assert status.returncode == 0 and "1 node online" in status.stdout

    stats = nodes.celery_json("inspect", "stats", node=name)[name]
    assert stats["pid"] == node.pid and stats["prefetch_count"] == 2 and stats["total"] == {}
    assert stats["pool"]["max-concurrency"] == 1 and stats["pool"]["processes"] == [node.pid]
    assert stats["broker"]["hostname"] and "password" not in stats["broker"]
    assert isinstance(stats["uptime"], int) and isinstance(stats["rusage"], dict)

    registered = nodes.celery_json("inspect", "registered", node=name)[name]
    assert registered == ["m.add", "m.block", "m.fail", "m.flaky", "m.other", "m.reject",
                          "m.sleep [rate_limit=100/m]"]

    queues = nodes.celery_json("inspect", "active_queues", node=name)[name]
    assert [(q["name"], q["exchange"]["name"], q["routing_key"], q["durable"]) for q in queues] == \
        [(nodes.queue, f"{nodes.prefix}.x", "work", True)]

    release = nodes.tmp_path / "release"
    busy = nodes.tasks.block.delay(str(release))
    active = wait_until(lambda: nodes.celery_json("inspect", "active", node=name)[name], 30, "an active task")
    assert [(a["id"], a["name"], a["args"], a["hostname"]) for a in active] == \
        [(busy.id, "m.block", [str(release)], name)]
    assert active[0]["time_start"] > 0 and active[0]["worker_pid"] == node.pid
    waiting = nodes.tasks.add.delay(1, 2)
    reserved = wait_until(lambda: nodes.celery_json("inspect", "reserved", node=name)[name], 30, "a reserved task")
    assert [(r["id"], r["name"]) for r in reserved] == [(waiting.id, "m.add")]
    assert nodes.celery_json("inspect", "scheduled", node=name) == {name: []}
    release.touch()
    conf = nodes.celery_json("inspect", "conf", node=name)[name]
    assert conf["worker_queues"] == [nodes.queue] and "guest:guest" not in str(conf)
    wait_until(lambda: nodes.celery_json("inspect", "stats", node=name)[name]["total"] == {"m.block": 1, "m.add": 1},
               30, "both tasks counted")


def test_celery_control_rate_limit_revoke_shutdown(nodes, event_log):
    node = nodes.start("--events")
    name = node.node
    ok = nodes.celery("control", "rate_limit", "m.add", "5/s", "-d", name)
    assert ok.returncode == 0 and "new rate limit set successfully" in ok.stdout
    assert "m.add [rate_limit=5/s]" in nodes.celery_json("inspect", "registered", node=name)[name]
    unknown = nodes.celery_json("control", "rate_limit", "no.such", "5/s", node=name)
    assert unknown == [{name: {"error": "unknown task"}}]  # `celery control --json` prints the reply list

    # revoked before it is even published: the node drops it on arrival
    task_id = "revoked-before-sent-" + nodes.prefix
    revoke = nodes.celery("control", "revoke", task_id, "-d", name)
    assert revoke.returncode == 0 and f"tasks {task_id} flagged as revoked" in revoke.stdout
    assert nodes.celery_json("inspect", "revoked", node=name) == {name: [task_id]}
    nodes.tasks.add.apply_async((1, 1), task_id=task_id)
    after = nodes.tasks.add.delay(2, 2)
    event_log.wait("task-succeeded", after.id)
    revoked = event_log.wait("task-revoked", task_id)
    assert (revoked["terminated"], revoked["expired"]) == (False, False)
    assert event_log.of("task-received", task_id) == [] and event_log.of("task-started", task_id) == []

    shutdown = nodes.celery("control", "shutdown", "-d", name)
    assert shutdown.returncode == 0 and "shutting down" in shutdown.stdout
    assert node.wait(30) == 0
    event_log.wait("worker-offline")
    ping = nodes.celery("inspect", "ping", "-d", name)
    assert ping.returncode != 0 and "No nodes replied" in ping.stderr + ping.stdout


def test_celery_sees_amqtask_refuse_what_read_only_forbids(nodes):
    node = nodes.start("--control", "read-only")
    name = node.node
    assert nodes.celery_json("inspect", "ping", node=name) == {name: {"ok": "pong"}}
    refused = nodes.celery_json("control", "shutdown", node=name)
    assert refused == [{name: {"error": f"refused: worker.control is read-only on {name}"}}]
    assert node.poll() is None
    assert "refused control command shutdown() from reply address reply.celery.pidbox/" in nodes.log(node)
    node.send_signal(signal.SIGTERM)
    assert node.wait(30) == 0


def test_control_off_answers_nothing(nodes):
    node = nodes.start("--control", "off")
    ping = nodes.celery("inspect", "ping", "-d", node.node)
    assert ping.returncode != 0 and "No nodes replied" in ping.stderr + ping.stdout


def test_celery_control_autoscale_changes_the_bounds_of_a_worker_started_with_autoscale(nodes):
    """Before: "No such control command: autoscale", though `amqtask worker --autoscale` works."""
    plain = nodes.start()
    assert nodes.celery_json("control", "autoscale", "4", "2", node=plain.node) == \
        [{plain.node: {"error": "Autoscale not enabled"}}]  # Celery's answer too

    node = nodes.start("--autoscale", "3,1", name=nodes.name("-b"))
    name = node.node
    assert nodes.celery_json("inspect", "stats", node=name)[name]["prefetch_count"] == 3 * 2  # for the max
    assert nodes.celery_json("control", "autoscale", "4", "2", node=name) == \
        [{name: {"ok": "autoscale now max=4 min=2"}}]
    stats = wait_until(lambda: (s := nodes.celery_json("inspect", "stats", node=name)[name])
                       and s["prefetch_count"] == 4 * 2 and s, 30, "the window sized for the new max")
    assert stats["pool"]["max-concurrency"] == 2  # grown to the new min at once
    assert nodes.celery_json("control", "pool_grow", "1", node=name) == \
        [{name: {"error": "pool_grow is not supported with autoscale. Adjust autoscale range instead."}}]

    below_min = nodes.amqtask("control", "autoscale", "1", "-d", name)
    assert below_min.returncode == 1 and "autoscale min (2) must not exceed max (1)" in below_min.stdout
    lowered = nodes.amqtask("control", "autoscale", "1", "1", "-d", name)
    assert lowered.returncode == 0 and f"{name}: autoscale now max=1 min=1" in lowered.stdout
    stats = wait_until(lambda: (s := nodes.celery_json("inspect", "stats", node=name)[name])
                       and s["prefetch_count"] == 1 * 2 and s, 30, "the window sized for max 1")
    assert stats["pool"]["max-concurrency"] == 1
    refused = nodes.amqtask("control", "autoscale", "2", "-d", plain.node)
    assert refused.returncode == 1 and f"{plain.node}: error: Autoscale not enabled" in refused.stdout
