"""Flower 2 (real, as a subprocess) watching a node that runs amqtask's monitoring
modules: the worker and its tasks appear through Flower's HTTP API with their states
and run times, and a task is revoked through Flower."""
from __future__ import annotations

import pytest

from .monitoring import Flower, event_log, nodes, wait_until  # noqa: F401 - fixtures


@pytest.fixture
def flower(nodes, tmp_path):
    f = Flower(nodes, tmp_path)
    yield f
    f.stop()


def test_flower_shows_the_worker_and_its_tasks(nodes, flower):
    # task events off at start: Flower's periodic enable_events turns them on
    node = nodes.start()
    name = node.node
    status = wait_until(lambda: flower.get("/api/workers?status=1").get(name), 60, "Flower to see the worker online")
    assert status is True
    workers = wait_until(lambda: flower.get(f"/api/workers?refresh=1&workername={name}").get(name, {}).get("stats")
                         and flower.get(f"/api/workers?workername={name}"), 60, "Flower to inspect the worker")
    info = workers[name]
    assert info["stats"]["pid"] == node.pid and info["stats"]["prefetch_count"] == 2
    assert [q["name"] for q in info["active_queues"]] == [nodes.queue]
    assert "m.sleep [rate_limit=100/m]" in info["registered"]
    wait_until(lambda: "task events enabled by remote" in nodes.log(node), 30, "Flower to enable task events")

    ok = nodes.tasks.add.delay(2, 3)
    slow = nodes.tasks.sleep.delay(0.3)
    bad = nodes.tasks.fail.delay()

    def finished() -> dict:
        tasks = flower.get("/api/tasks")
        return tasks if all(tasks.get(t.id, {}).get("state") in ("SUCCESS", "FAILURE")
                            for t in (ok, slow, bad)) else {}

    tasks = wait_until(finished, 60, "Flower to see the three tasks finish")
    assert (tasks[ok.id]["state"], tasks[ok.id]["result"], tasks[ok.id]["worker"]) == ("SUCCESS", "5", name)
    assert tasks[slow.id]["runtime"] >= 0.3
    assert tasks[bad.id]["state"] == "FAILURE" and tasks[bad.id]["exception"] == "ValueError('boom')"
    detail = flower.task(ok.id)
    assert (detail["name"], detail["state"], detail["args"], detail["worker"]) == ("m.add", "SUCCESS", "(2, 3)", name)
    assert detail["runtime"] > 0 and detail["received"] <= detail["started"] <= detail["succeeded"]
    page = flower.get(f"/worker/{name}", raw=True).decode()
    assert name in page and nodes.queue in page


def test_revoke_through_flower(nodes, flower, event_log):
    node = nodes.start("--events")
    name = node.node
    wait_until(lambda: flower.get("/api/workers?status=1").get(name), 60, "Flower to see the worker")
    release = nodes.tmp_path / "release"
    busy = nodes.tasks.block.delay(str(release))
    event_log.wait("task-started", busy.id)
    queued = nodes.tasks.add.delay(1, 1)
    assert flower.post(f"/api/task/revoke/{queued.id}") == {"message": f"Revoked '{queued.id}'"}
    # the revoke has reached the node before the running task lets the queued one start
    wait_until(lambda: queued.id in nodes.amqtask("inspect", "revoked", "-d", name).stdout, 30, "the revocation")
    release.touch()
    state = wait_until(lambda: flower.task(queued.id).get("state") == "REVOKED" and flower.task(queued.id), 60,
                       "the task to be REVOKED in Flower")
    assert state["started"] is None and state["succeeded"] is None
    assert event_log.of("task-started", queued.id) == []
    assert event_log.wait("task-succeeded", busy.id)["result"] == repr(str(release))
