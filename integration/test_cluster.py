"""Node loss, partitions and rolling restarts on a 3-node RabbitMQ cluster
(integration/cluster.py), with quorum task queues and the quorum delay cascade.

Each scenario accounts for every task as docs/reliability.md does: confirmed at
publish, executed, executed more than once, lost (confirmed, never run). Lost must
be zero. Opt-in: AMQTASK_CLUSTER_TESTS=ci (the reduced set, `make cluster-test-ci`)
or =full (`make cluster-test`, the rolling restart drains 20,000 tasks). The cluster
is started if it is not up, and stopped (its data deleted) at the end if it was
started here; a node a test stopped or killed is started again after the test.
"""
from __future__ import annotations

import json
import os
import threading
import time

import pika
import pytest

from amqtask import AmqtaskError
from amqtask.worker.worker import consumed_topology

from .cluster import Cluster
from .conftest import WorkerHarness, worker_yaml
from .proxy import TcpProxy
from .reliability import report
from .test_chaos import account, no_results_app, runs, wait_all_ran

MODE = os.environ.get("AMQTASK_CLUSTER_TESTS", "")
FULL = MODE == "full"
pytestmark = [pytest.mark.skipif(MODE not in ("ci", "full"),
                                 reason="cluster scenarios: AMQTASK_CLUSTER_TESTS=ci|full (make cluster-test-ci)"),
              pytest.mark.timeout(1200 if FULL else 300)]
QUORUM = "queue_type: quorum"
ERRORS: list[str] = []  # why publishes raised, for the failure messages
URL_ENV = "AMQTASK_TEST_CLUSTER_URL"  # a worker's own order of the node URLs


def n(ci: int, full: int) -> int:
    return full if FULL else ci


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    started_here = not c.up()
    c.start()
    yield c
    if started_here and not os.environ.get("AMQTASK_CLUSTER_KEEP"):
        c.stop()


@pytest.fixture
def nodes(cluster):
    """The cluster, whole again after the test whatever the test did to it."""
    yield cluster
    for node in cluster.nodes:
        if not node.alive():
            node.start()
    cluster.wait_up()


@pytest.fixture
def camqp(nodes):
    """A raw channel on the cluster; deletes what `track` registered."""
    params = [pika.URLParameters(node.url[:-1] + "%2F") for node in nodes.nodes]
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    created: dict[str, set[str]] = {"queue": set(), "exchange": set()}
    channel.track = lambda kind, name: created[kind].add(name)  # type: ignore[attr-defined]
    yield channel
    try:
        connection.close()
    except (pika.exceptions.AMQPError, OSError):
        pass
    cleanup = pika.BlockingConnection(params).channel()
    for q in created["queue"]:
        cleanup.queue_delete(q)
    for x in created["exchange"]:
        cleanup.exchange_delete(x)
    cleanup.connection.close()


def cluster_url(nodes: Cluster) -> str:
    """Every node, unless a worker's environment gives its own order of them."""
    return f"${{{URL_ENV}:-{nodes.urls}}}"


def rotated(urls: list[str], first: int) -> str:
    return ";".join(urls[first:] + urls[:first])


@pytest.fixture
def quorum_harness(prefix, tmp_path, camqp, nodes):
    h = WorkerHarness(prefix, tmp_path, camqp, url=cluster_url(nodes), queue_options=QUORUM)
    yield h
    h.stop_all()


def publish(app, count: int, tag: str, *, countdown_every: int = 0, countdown: float = 0.0, sleep: float = 0.0,
            confirmed: list[str] | None = None, raised: list[str] | None = None) -> list[str]:
    """Send `count` t.mark tasks (every `countdown_every`-th with a countdown); the
    ids the broker confirmed are returned (and appended to `confirmed`)."""
    confirmed = [] if confirmed is None else confirmed
    for i in range(count):
        task_id = f"{tag}-{i}"
        options = {"countdown": countdown} if countdown_every and i % countdown_every == 0 else {}
        try:
            app.send_task("t.mark", (i, sleep), task_id=task_id, ignore_result=True, **options)
            confirmed.append(task_id)
        except AmqtaskError as exc:
            if raised is not None:
                raised.append(task_id)
                ERRORS.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)  # as an application would, rather than spend every task while the queue elects a leader
    return confirmed


def leader(nodes: Cluster, queue: str):
    return nodes.queue_leader(queue)


def test_cluster_is_three_nodes_and_queues_are_replicated(nodes, quorum_harness):
    quorum_harness.declare()
    assert nodes.running_nodes() == sorted(n.node for n in nodes.nodes)
    rows = json.loads(nodes.nodes[0].ctl("list_queues", "name", "type", "members", "--formatter", "json"))
    row = next(r for r in rows if r["name"] == quorum_harness.queue)
    assert row["type"] == "quorum" and len(row["members"]) == 3, row


def test_countdowns_survive_losing_the_node_holding_every_leader(nodes, quorum_harness):
    """kill -9 the leader's node mid-drain, with countdowns waiting in the quorum
    delay cascade: the worker fails over and runs every task that was not waiting
    while the node is down; every countdown runs, at the latest once the node is
    back (RabbitMQ 3.10's at-least-once dead-lettering can wait for a dead member of
    the next level: see docs/cluster.md)."""
    h = quorum_harness
    h.declare()
    count = n(600, 3000)
    # 50 ms a task on 4 threads: the tasks without a countdown take count/30 s to drain
    # (5 s for 600), so the kill lands while most of them are still queued.
    ids = publish(h.app, count, "kill", countdown_every=3, countdown=10.0, sleep=0.05)
    assert len(ids) == count
    immediate = [task_id for i, task_id in enumerate(ids) if i % 3]
    delayed = set(ids) - set(immediate)
    # What the worker would declare, the quorum delay cascade included, so that the
    # leaders are known before it starts and the kill is not held up by rabbitmqctl.
    assert h.app.publisher.transport.declare(consumed_topology(h.app.settings.topology, (h.queue,))) == []
    victim = leader(nodes, h.queue)
    cascade_leader = leader(nodes, "amqtask.delay.q.13")  # where the worker parks 10 s countdowns first
    worker = h.start("-P", "threads", "-c", "4")
    h.wait_for(lambda: len(set(immediate) & set(runs(h))) >= len(immediate) // 4, timeout=120,
               what="a quarter of the tasks without a countdown to run")
    victim.kill()
    killed = time.monotonic()
    ran = set(runs(h))
    ran_before, countdowns_before = len(ran & set(immediate)), len(ran & delayed)
    assert ran_before < len(immediate), "the drain was over before the kill"
    failover = wait_all_ran(h, immediate, timeout=120)
    while time.monotonic() - killed < 20 and not set(ids) <= set(runs(h)):  # well past due, node still down
        time.sleep(0.5)
    stalled = len(set(ids) - set(runs(h)))
    back = ""
    if stalled:
        nodes.restart(victim)
        back = f"; {stalled} countdowns waited for {victim.name} to come back ({time.monotonic() - killed:.0f}s)"
    took = wait_all_ran(h, ids, timeout=180)
    figures = account(h, ids)
    assert worker.poll() is None, h.output(worker)
    assert figures["lost"] == 0, figures
    report("cluster: kill -9 the leader's node mid-drain",
           load=f"{count} tasks of 50 ms, 1/3 with countdown 10 s, quorum, 1 worker -c 4",
           faults=f"kill -9 {victim.name} (task queue leader; cascade level 13 on {cascade_leader.name}) "
                  f"after {ran_before} of {len(immediate)} tasks without countdown ran "
                  f"({countdowns_before} countdowns had run)", **figures, crashes="1 node (injected)",
           recovery=f"the other {len(immediate) - ran_before} without countdown all ran {failover:.1f}s after "
                    f"the kill{back}; the last countdown {took:.1f}s later")


def test_kill_the_leader_mid_publish(nodes, quorum_harness):
    """kill -9 the leader's node while a publisher sends: every delay() either returns
    (confirmed) or raises, and what was confirmed runs.

    RabbitMQ 3.10.8 nacks every publish of a channel whose first publish to a quorum
    queue came while the queue's record still named the dead leader (the channel asks
    that node for the queue's machine version, gets nodedown and keeps the state), for
    as long as the channel lives; a new channel a moment later publishes fine. The
    publisher fails over to another node at once, so whether its new channel lands in
    that window is a race: how many publishes raised is reported, not asserted. What
    must hold is asserted: nothing confirmed is lost, nothing runs that was not sent,
    and with the node still down the queue takes tasks on a new connection."""
    h = quorum_harness
    h.declare()
    victim = leader(nodes, h.queue)
    confirmed: list[str] = []
    raised: list[str] = []
    ERRORS.clear()
    count = n(600, 5000)
    publisher = threading.Thread(target=publish, args=(h.app, count, "pub"),
                                 kwargs={"confirmed": confirmed, "raised": raised, "countdown_every": 5,
                                         "countdown": 2.0})
    publisher.start()
    while len(confirmed) < count // 3 and publisher.is_alive():
        time.sleep(0.01)
    victim.kill()
    at_kill = len(confirmed)
    publisher.join(300)
    assert not publisher.is_alive()
    assert len(confirmed) + len(raised) == count, "a publish neither returned nor raised an AmqtaskError"
    assert not victim.alive()
    h.app.close()  # a new connection, hence new channels: the queue has a leader on the other nodes
    confirmed += publish(h.app, 1, "pub-new-connection")
    assert confirmed[-1] == "pub-new-connection-0"
    h.start("-P", "threads", "-c", "4")
    took = wait_all_ran(h, confirmed, timeout=180)
    time.sleep(1)
    figures = account(h, confirmed)
    extras = set(runs(h)) - set(confirmed)
    assert extras <= set(raised)  # nothing runs that nobody sent
    assert figures["lost"] == 0, figures
    kinds = ", ".join(f"{kind} x{sum(e.startswith(kind) for e in ERRORS)}"
                      for kind in sorted({e.split(':')[0] for e in ERRORS}))
    report("cluster: kill -9 the leader's node mid-publish", load=f"{count} delay(), 1/5 with countdown 2 s",
           faults=f"kill -9 {victim.name} after {at_kill} confirms", **figures, crashes="1 node (injected)",
           recovery=f"{len(raised)} publishes raised ({kinds or 'none'}; {len(extras)} of them reached the broker), "
                    f"{len(confirmed) - 1 - at_kill} confirmed after the kill; a new connection published at once; "
                    f"drained in {took:.1f}s")


def test_stop_a_minority_node_and_bring_it_back(nodes, quorum_harness):
    """A follower's node stopped warmly and started again mid-drain; a worker whose
    first URL is that node keeps going on the others and comes back."""
    h = quorum_harness
    h.declare()
    lead = leader(nodes, h.queue)
    follower = next(node for node in nodes.nodes if node is not lead)
    count = n(900, 5000)
    ids = publish(h.app, count, "minority", countdown_every=4, countdown=3.0)
    urls = [node.url for node in nodes.nodes]
    h.env[URL_ENV] = rotated(urls, urls.index(follower.url))
    worker = h.start("-P", "threads", "-c", "4")
    time.sleep(1.0)
    started = time.monotonic()
    follower.halt()
    time.sleep(3.0)
    nodes.restart(follower)
    back = time.monotonic() - started
    wait_all_ran(h, ids, timeout=180)
    drained = time.monotonic() - started
    figures = account(h, ids)
    assert worker.poll() is None, h.output(worker)
    assert figures["lost"] == 0, figures
    report("cluster: stop a minority node and start it again", load=f"{count} tasks, 1/4 with countdown 3 s",
           faults=f"rabbitmqctl stop {follower.name} (a follower) for 3 s", **figures, crashes=0,
           recovery=f"node back after {back:.0f}s, all ran {drained:.1f}s after the stop")


def test_clients_cut_off_from_the_leader(nodes, quorum_harness, prefix):
    """A partition between the clients and the leader's node (a proxy that drops
    every connection and refuses new ones): workers and publisher fail over to the
    other nodes, which reach the leader; nothing confirmed is lost."""
    h = quorum_harness
    h.declare()
    lead = leader(nodes, h.queue)
    proxy = TcpProxy("127.0.0.1", lead.port).start()
    try:
        others = [node.url for node in nodes.nodes if node is not lead]
        url = ";".join([f"amqp://guest:guest@127.0.0.1:{proxy.port}//", *others])
        h.env[URL_ENV] = url
        workers = [h.start("-P", "threads", "-c", "2") for _ in range(2)]
        publisher = no_results_app(worker_yaml(prefix, url, QUORUM))
        confirmed: list[str] = []
        raised: list[str] = []
        count = n(1200, 8000)
        half = count // 2
        publish(publisher, half, "part-a", confirmed=confirmed, raised=raised, countdown_every=6, countdown=2.0)
        proxy.refuse(True)
        proxy.cut()
        publish(publisher, count - half, "part-b", confirmed=confirmed, raised=raised, countdown_every=6,
                countdown=2.0)
        publisher.close()
        took = wait_all_ran(h, confirmed, timeout=180)
        time.sleep(1)
        figures = account(h, confirmed)
        extras = set(runs(h)) - set(confirmed)
        assert extras <= set(raised)
        assert figures["lost"] == 0, figures
        assert all(w.poll() is None for w in workers)
        report("cluster: clients partitioned from the leader's node", load=f"{count} tasks, 2 workers",
               faults=f"proxy to {lead.name} cut and refusing after {half} publishes", **figures, crashes=0,
               recovery=f"{len(raised)} publishes raised; drained in {took:.1f}s")
    finally:
        proxy.stop()


def test_rolling_restart_while_three_workers_drain(nodes, quorum_harness):
    """Every node restarted in turn (rabbitmqctl stop, start, wait for the cluster)
    while 3 workers, each first connected to a different node, drain tasks with
    countdowns mixed in."""
    h = quorum_harness
    h.declare()
    count = n(3000, 20_000)
    sleep = 12 * 60 / count  # 12 slots busy for about a minute: the restarts land mid-drain
    ids = publish(h.app, count, "roll", countdown_every=10, countdown=5.0, sleep=sleep)
    urls = [node.url for node in nodes.nodes]
    workers = []
    for i in range(3):
        h.env[URL_ENV] = rotated(urls, i)
        workers.append(h.start("-P", "threads", "-c", "4"))
    restarts = []
    waiting = count - len(set(runs(h)))
    assert waiting > count // 2, "the drain was over before the first restart"
    started = time.monotonic()
    for node in nodes.nodes:
        t0 = time.monotonic()
        node.halt()
        nodes.restart(node)
        restarts.append(f"{node.name} {time.monotonic() - t0:.0f}s")
    remaining = count - len(set(runs(h)))
    wait_all_ran(h, ids, timeout=n(240, 900))
    took = time.monotonic() - started
    figures = account(h, ids)
    assert all(w.poll() is None for w in workers), [h.output(w)[-2000:] for w in workers if w.poll() is not None]
    assert figures["lost"] == 0, figures
    report("cluster: rolling restart of 3 nodes", load=f"{count} tasks, 1/10 with countdown 5 s, 3 workers",
           faults="restart " + ", ".join(restarts) + f" ({waiting} waiting at the first, {remaining} after the last)",
           **figures, crashes=0, recovery=f"drained in {took:.1f}s from the first restart")


def test_delivery_limit_dead_letters_with_the_reason(nodes, prefix, tmp_path, camqp):
    """A quorum queue's x-delivery-limit: a message handed out that many times is
    dead-lettered by the worker with amqtask's reason, not run, not dropped."""
    h = WorkerHarness(prefix, tmp_path, camqp, url=nodes.urls,
                      queue_options=QUORUM + "\narguments: {x-delivery-limit: 2}")
    try:
        h.declare()
        h.app.send_task("t.mark", (1,), task_id="poison", ignore_result=True)
        for _ in range(2):  # two deliveries that ended without an ack, as a crashing worker leaves them
            channel = camqp.connection.channel()
            method = None
            deadline = time.monotonic() + 30
            while method is None and time.monotonic() < deadline:
                method, props, body = channel.basic_get(h.queue, auto_ack=False)
            assert method is not None
            assert (props.headers or {}).get("id") == "poison"
            channel.basic_nack(method.delivery_tag, requeue=True)
            channel.close()
        h.app.send_task("t.mark", (2,), task_id="healthy", ignore_result=True)
        h.start("-P", "threads", "-c", "2")
        h.wait_for(lambda: "healthy" in runs(h), what="the healthy task to run")
        channel = camqp.connection.channel()
        dead = None
        deadline = time.monotonic() + 30
        while dead is None and time.monotonic() < deadline:
            method, props, body = channel.basic_get(h.queue + ".dead", auto_ack=True)
            dead = props if method is not None else None
            time.sleep(0.2)
        assert dead is not None, "nothing was dead-lettered"
        assert dead.headers["id"] == "poison"
        assert "delivery limit reached" in dead.headers["x-amqtask-reason"], dead.headers
        # the copy starts afresh: the .dead queue (quorum too) counts its own deliveries only
        assert dead.headers.get("x-delivery-count", 0) == 0, dead.headers
        assert "poison" not in runs(h)
    finally:
        h.stop_all()


def test_publisher_confirms_across_a_silent_node_and_a_nack(nodes, prefix, tmp_path, camqp):
    """delay_async() through a node that goes silent: the publish not confirmed in
    time raises, that connection is dropped, and the next publish starts with the
    next node (not waiting on the silent one again). A broker nack raises."""
    proxy = TcpProxy("127.0.0.1", nodes.nodes[0].port).start()
    try:
        url = ";".join([f"amqp://guest:guest@127.0.0.1:{proxy.port}//", nodes.nodes[1].url])
        text = worker_yaml(prefix, url, QUORUM).replace("publish_timeout: 5", "publish_timeout: 3")
        # A classic queue that refuses: RabbitMQ 3.10 nacks at once. (A quorum queue at its
        # max_length with reject-publish leaves the publish unconfirmed instead: PublishError.)
        text = text.replace(f"  {prefix}.other:\n    {QUORUM}\n",
                            f"  {prefix}.other:\n    max_length: 1\n    overflow: reject-publish\n")
        assert "overflow: reject-publish" in text
        camqp.track("queue", f"{prefix}.work")
        camqp.track("queue", f"{prefix}.other")
        camqp.track("exchange", f"{prefix}.x")
        app = no_results_app(text)
        assert app.publisher.transport.declare(app.settings.topology) == []

        async def scenario() -> dict:
            out: dict = {}
            await app.send_task_async("t.mark", (0,), task_id="before", ignore_result=True)
            proxy.silence(True)
            started = time.monotonic()
            try:
                await app.send_task_async("t.mark", (1,), task_id="silent", ignore_result=True)
                out["silent"] = "confirmed"
            except AmqtaskError as exc:
                out["silent"] = type(exc).__name__
            out["silent_s"] = time.monotonic() - started
            started = time.monotonic()
            await app.send_task_async("t.mark", (2,), task_id="after", ignore_result=True)
            out["after_s"] = time.monotonic() - started
            outcomes = []
            for i in range(4):  # max_length 1, reject-publish: the queue fills, then refuses
                try:
                    await app.send_task_async("t.unrated", (i,), ignore_result=True)
                    outcomes.append("confirmed")
                except AmqtaskError as exc:
                    outcomes.append(type(exc).__name__)
            out["nack"] = outcomes
            return out

        import asyncio

        out = asyncio.run(scenario())
        assert out["silent"] == "PublishError" and 2.5 < out["silent_s"] < 10, out
        # the retry went to the next node at once, not through connect_timeout on the silent one
        assert out["after_s"] < 2.0, out
        assert out["nack"][0] == "confirmed" and "NackError" in out["nack"], out
        assert set(out["nack"]) <= {"confirmed", "NackError"}, out
        ids = {props.correlation_id for _, props, _ in drain_queue(camqp, f"{prefix}.work")}
        assert {"before", "after"} <= ids, ids
    finally:
        proxy.stop()


def drain_queue(channel, queue: str) -> list:
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))
