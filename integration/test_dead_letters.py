"""`amqtask dead ls/show/requeue/purge` against the real broker: dead letters a real
worker made, RabbitMQ's own (x-death), a shared dead-letter queue, a quorum one, and
a requeue killed at each step of publish -> confirm -> ack."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid

import pika
import pytest

from amqtask import deadletters as dl

from .conftest import ROOT, drain

BROKER = "${AMQTASK_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}"


def amqtask(*args: str, config, env=None, input=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amqtask.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, input=input,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def dead_yaml(p: str) -> str:
    return f"""\
broker:
  url: {BROKER}
  publish_timeout: 5
defaults:
  exchange: {p}.x
  routing_key: work
exchanges:
  {p}.x: {{type: direct}}
  {p}.dlx: {{type: direct}}
queues:
  {p}.work:
    bindings: [{{exchange: {p}.x, routing_key: work}}]
  {p}.billing:
    dead_letter_exchange: {p}.dlx
    dead_letter_routing_key: billing
    bindings: [{{exchange: {p}.x, routing_key: billing}}]
  {p}.refunds:
    dead_letter_exchange: {p}.dlx
    dead_letter_routing_key: billing
    bindings: [{{exchange: {p}.x, routing_key: refunds}}]
  {p}.billing_dead:
    bindings: [{{exchange: {p}.dlx, routing_key: billing}}]
  {p}.ledger:
    dead_letter_exchange: {p}.dlx
    dead_letter_routing_key: ledger
    bindings: [{{exchange: {p}.x, routing_key: ledger}}]
  {p}.ledger_dead:
    queue_type: quorum
    bindings: [{{exchange: {p}.dlx, routing_key: ledger}}]
  {p}.capped:
    dead_letter_exchange: {p}.dlx
    dead_letter_routing_key: capped
    bindings: [{{exchange: {p}.x, routing_key: capped}}]
  {p}.capped_dead:
    queue_type: quorum
    arguments: {{x-delivery-limit: 2}}
    bindings: [{{exchange: {p}.dlx, routing_key: capped}}]
"""


QUEUES = ("work", "work.dead", "billing", "refunds", "billing_dead", "ledger", "ledger_dead", "billing_dead.dead",
          "capped", "capped_dead")


@pytest.fixture
def world(tmp_path, prefix, amqp, broker_url):
    """The topology above, declared; every queue it may create is deleted afterwards."""
    from amqtask.amqp.blocking import BlockingTransport
    from amqtask.topology.loader import load_settings

    config = tmp_path / "routing.yaml"
    config.write_text(dead_yaml(prefix))
    for name in QUEUES:
        amqp.track("queue", f"{prefix}.{name}")
        amqp.track("queue", dl.journal_queue(f"{prefix}.{name}"))
    for name in ("x", "dlx"):
        amqp.track("exchange", f"{prefix}.{name}")
    settings = load_settings(config)
    with BlockingTransport(settings.broker) as transport:
        assert transport.declare(settings.topology) == []
    amqp.queue_declare(f"{prefix}.work.dead", durable=True)  # as a worker declares it
    amqp.confirm_delivery()
    return config


def task_headers(task: str, task_id: str, **extra) -> dict:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
            "retries": 3, "eta": None, "expires": None, "argsrepr": "()", "kwargsrepr": "{}", **extra}


def put_dead(amqp, queue: str, origin: str, task: str, task_id: str, reason: str, *, minutes_ago: int = 5,
             **extra):
    """A dead letter exactly as a worker publishes one (see docs/protocol.md)."""
    failed = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes_ago)
    headers = task_headers(task, task_id, **{"x-amqtask-reason": reason, "x-amqtask-queue": origin,
                                             "x-amqtask-failed-at": failed.isoformat(),
                                             "x-amqtask-worker": "w1@host", **extra})
    body = json.dumps([[task_id], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    amqp.basic_publish("", queue, body.encode(), pika.BasicProperties(
        headers=headers, correlation_id=task_id, content_type="application/json", content_encoding="utf-8",
        delivery_mode=2), mandatory=True)


def ids_in(amqp, queue: str) -> list[str]:
    return [props.headers["id"] for _, props, _ in drain(amqp, queue)]


def ids_in_place(amqp, queue: str) -> list[str]:
    """The ids in `queue`, in order, each checked to be undelivered before, then all returned."""
    channel = amqp.connection.channel()
    seen = []
    while True:
        method, props, _ = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        assert not method.redelivered and props.headers.get("x-delivery-count", 0) == 0
        seen.append(props.headers["id"])
    channel.close()
    return seen


def ids_left(amqp, queue: str) -> list[str]:
    """The ids in `queue`, in order, left there (a classic queue keeps the order)."""
    channel = amqp.connection.channel()
    seen = []
    while True:
        method, props, _ = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        seen.append(props.headers["id"])
    channel.close()
    return seen


def depth(amqp, queue: str) -> int | None:
    channel = amqp.connection.channel()
    try:
        count = channel.queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return None
    channel.close()
    return count


def test_worker_dead_letters_listed_shown_requeued_and_dead_again(harness, amqp, prefix):
    """Dead letters a real worker made: ls shows them, show explains one, requeue sends
    the failures back (the worker fails them again) and leaves the others in place."""
    harness.declare()
    harness.start("-P", "threads", "-c", "2")
    failing = [harness.app.send_task("t.fail", task_id=f"fail-{i}", ignore_result=True).id for i in range(2)]
    unknown = harness.app.send_task("t.nobody", task_id="unknown-1", ignore_result=True).id
    dead_queue = f"{harness.queue}.dead"
    harness.wait_for(lambda: amqp.queue_declare(dead_queue, passive=True).method.message_count == 3,
                     what="three dead letters")

    listed = amqtask("dead", "ls", "-Q", harness.queue, config=harness.config)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == [harness.queue] * 3
    assert {r[-3] for r in rows} == {*failing, unknown}
    assert "ValueError: boom" in listed.stdout and "unknown task 't.nobody'" in listed.stdout
    assert {r[-1] for r in rows} == {"1"}  # died once each

    shown = amqtask("dead", "show", failing[0], config=harness.config)
    assert shown.returncode == 0, shown.stderr
    assert f"dead-letter queue: {dead_queue}" in shown.stdout
    assert "reason:            ValueError: boom" in shown.stdout and "task:              t.fail" in shown.stdout
    assert "x-amqtask-worker" in shown.stdout and '"callbacks": null' in shown.stdout

    moved = amqtask("dead", "requeue", "-Q", harness.queue, "--task", "t.fail", config=harness.config)
    assert moved.returncode == 0, moved.stderr
    assert f"{dead_queue} -> {harness.queue}: 2 moved" in moved.stdout
    # The worker runs them again; they fail again and come back, now having died twice.
    harness.wait_for(lambda: amqp.queue_declare(dead_queue, passive=True).method.message_count == 3,
                     what="the re-driven tasks to die again")
    letters = {props.headers["id"]: props.headers for _, props, _ in drain(amqp, dead_queue)}
    assert set(letters) == {*failing, unknown}
    for task_id in failing:
        assert letters[task_id]["x-amqtask-redriven"] == 1
        assert letters[task_id]["x-amqtask-redriven-reason"] == "ValueError: boom"
        assert letters[task_id]["x-amqtask-reason"] == "ValueError: boom"
        assert dl.DeadLetter(dead_queue, b"", {}, letters[task_id]).deaths == 2
    assert "x-amqtask-redriven" not in letters[unknown]


def test_ls_leaves_every_message_in_place_and_in_order(world, amqp, prefix):
    dead_queue = f"{prefix}.work.dead"
    expected = [f"id-{i}" for i in range(30)]
    for i, task_id in enumerate(expected):
        put_dead(amqp, dead_queue, f"{prefix}.work", "t.fail", task_id, f"ValueError: no {i}", minutes_ago=i)
    for _ in range(2):
        listed = amqtask("dead", "ls", config=world)
        assert listed.returncode == 0, listed.stderr
    assert [line.split()[-3] for line in listed.stdout.splitlines()[1:]] == expected
    short = amqtask("dead", "ls", "--limit", "5", config=world)
    assert len(short.stdout.splitlines()) == 1 + 5 + 1 and "25 more not shown" in short.stdout
    assert ids_in(amqp, dead_queue) == expected  # nothing lost, nothing reordered


def test_ls_shows_reason_task_id_age_and_count(world, amqp, prefix):
    put_dead(amqp, f"{prefix}.work.dead", f"{prefix}.work", "t.fail", "abc", "max retries (3) exceeded: KeyError",
             minutes_ago=125)
    listed = amqtask("dead", "ls", "-Q", f"{prefix}.work", config=world)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["QUEUE", "REASON", "TASK", "ID", "AGE", "COUNT"]
    assert row.split()[0] == f"{prefix}.work" and row.split()[-4:] == ["t.fail", "abc", "2h", "1"]
    assert "max retries (3) exceeded: KeyError" in row
    missing = amqtask("dead", "show", "nope", config=world)
    assert missing.returncode == 1 and "no dead letter with id nope" in missing.stderr


def test_broker_dead_letters_in_a_shared_queue_are_told_apart_by_origin(world, amqp, prefix):
    """RabbitMQ dead-letters rejected messages itself (x-death); billing and refunds
    share one dead-letter queue; -Q picks one origin's letters and requeue moves only those."""
    for queue, task_id in ((f"{prefix}.billing", "b-1"), (f"{prefix}.refunds", "r-1"), (f"{prefix}.billing", "b-2")):
        amqp.basic_publish("", queue, b"[[], {}, {}]", pika.BasicProperties(
            headers=task_headers("t.charge", task_id), correlation_id=task_id, content_type="application/json",
            delivery_mode=2))
        method, _, _ = amqp.basic_get(queue, auto_ack=False)
        amqp.basic_reject(method.delivery_tag, requeue=False)
    dead_queue = f"{prefix}.billing_dead"
    assert depth(amqp, dead_queue) == 3

    listed = amqtask("dead", "ls", "-Q", f"{prefix}.billing", config=world)
    assert [line.split()[-3] for line in listed.stdout.splitlines()[1:]] == ["b-1", "b-2"]
    assert "rejected (by the broker)" in listed.stdout
    moved = amqtask("dead", "requeue", "-Q", f"{prefix}.refunds", config=world)
    assert moved.returncode == 0, moved.stderr
    assert f"{dead_queue} -> {prefix}.refunds: 1 moved" in moved.stdout
    [(_, props, _)] = drain(amqp, f"{prefix}.refunds")
    assert props.headers["id"] == "r-1" and "x-death" not in props.headers
    assert props.headers["retries"] == 0 and props.headers["x-amqtask-redriven"] == 1
    assert ids_in(amqp, dead_queue) == ["b-1", "b-2"]


def test_requeue_resets_retries_records_the_redrive_and_leaves_nothing_behind(world, amqp, prefix):
    dead_queue = f"{prefix}.work.dead"
    put_dead(amqp, dead_queue, f"{prefix}.work", "t.fail", "one", "ValueError: boom")
    moved = amqtask("dead", "requeue", config=world)
    assert moved.returncode == 0, moved.stderr
    assert f"{dead_queue} -> {prefix}.work: 1 moved" in moved.stdout and f"{dead_queue}: 0 left" in moved.stdout
    [(_, props, body)] = drain(amqp, f"{prefix}.work")
    headers = props.headers
    assert headers["id"] == "one" and headers["retries"] == 0 and props.correlation_id == "one"
    assert headers["x-amqtask-redriven"] == 1 and headers["x-amqtask-redriven-from"] == dead_queue
    assert headers["x-amqtask-redriven-reason"] == "ValueError: boom"
    assert dt.datetime.fromisoformat(headers["x-amqtask-redriven-at"]).tzinfo is not None
    assert not {"x-amqtask-reason", "x-amqtask-queue", "x-amqtask-failed-at", "BCC"} & set(headers)
    assert props.delivery_mode == 2 and json.loads(body)[0] == ["one"]
    assert depth(amqp, dead_queue) == 0
    assert depth(amqp, dl.journal_queue(dead_queue)) is None  # the journal is gone
    assert depth(amqp, dl.lock_queue(dead_queue)) is None  # and so is the lock
    again = amqtask("dead", "requeue", config=world)
    assert again.returncode == 0 and "nothing to requeue" in again.stdout


def test_requeue_by_reason_task_and_limit_keeps_the_rest_in_order(world, amqp, prefix):
    dead_queue = f"{prefix}.work.dead"
    letters = [("a", "t.fail", "ValueError: boom"), ("b", "t.other", "ValueError: boom"),
               ("c", "t.fail", "KeyError: 'x'"), ("d", "t.fail", "valueerror: BOOM again"),
               ("e", "t.fail", "ValueError: boom")]
    for task_id, task, reason in letters:
        put_dead(amqp, dead_queue, f"{prefix}.work", task, task_id, reason)
    moved = amqtask("dead", "requeue", "--reason", "valueerror", "--task", "t.f*", "--limit", "2", config=world)
    assert moved.returncode == 0, moved.stderr
    assert ids_in(amqp, f"{prefix}.work") == ["a", "d"]
    assert ids_in(amqp, dead_queue) == ["b", "c", "e"]


def test_a_letter_whose_queue_is_gone_stays_and_nothing_reaches_the_journal_alone(world, amqp, prefix):
    dead_queue = f"{prefix}.work.dead"
    put_dead(amqp, dead_queue, f"{prefix}.vanished", "t.fail", "lost-origin", "ValueError: boom")
    put_dead(amqp, dead_queue, f"{prefix}.work", "t.fail", "fine", "ValueError: boom")
    moved = amqtask("dead", "requeue", config=world)
    assert moved.returncode == 0, moved.stderr
    assert f"queue '{prefix}.vanished' does not exist; its dead letters stay" in moved.stderr
    assert ids_in(amqp, dead_queue) == ["lost-origin"]
    assert ids_in(amqp, f"{prefix}.work") == ["fine"]
    assert depth(amqp, dl.journal_queue(dead_queue)) is None


def test_a_second_requeue_of_the_same_queue_is_refused_while_one_runs(world, amqp, prefix):
    dead_queue = f"{prefix}.work.dead"
    put_dead(amqp, dead_queue, f"{prefix}.work", "t.fail", "x", "ValueError: boom")
    holder = amqp.connection.channel()
    holder.queue_declare(dl.lock_queue(dead_queue), exclusive=True, auto_delete=True)
    for command in (("requeue",), ("purge", "-f")):
        refused = amqtask("dead", *command, "-Q", dead_queue, config=world)
        assert refused.returncode == 1 and "another requeue or purge is working" in refused.stderr
        assert "Traceback" not in refused.stderr
    holder.close()
    assert ids_in(amqp, dead_queue) == ["x"]


CHILD = textwrap.dedent("""
    import os, signal, sys
    from amqtask import deadletters as dl
    from amqtask.amqp.deadletters import PikaDeadLetters, PikaReader
    from amqtask.topology.loader import load_settings

    config, queue, point, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen = {"before-publish": 0, "before-record": 0, "after-confirm": 0, "after-ack": 0}

    def step(name):
        if name == point:
            seen[name] += 1
            if seen[name] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    class Dying(PikaDeadLetters):
        def publish(self, queue, message):
            to_journal = queue.startswith("amqtask.redrive.")
            if not to_journal:
                step("before-publish")
            super().publish(queue, message)
            # The copy is confirmed by its queue, then its record by the journal.
            step("after-confirm" if to_journal else "before-record")

    ack = PikaReader.ack
    def dying_ack(self, tag):
        ack(self, tag)
        step("after-ack")
    PikaReader.ack = dying_ack

    settings = load_settings(config)
    with Dying(settings.broker) as broker:
        [target] = dl.targets(settings.topology, queue)
        dl.requeue(broker, target)
    print("not killed")
""")


@pytest.mark.parametrize("point", ["before-publish", "after-confirm", "after-ack"])
def test_requeue_killed_at_any_step_loses_and_duplicates_nothing(world, amqp, prefix, point):
    """SIGKILL on the third message: before its publish, between the confirmed record
    of its move and the ack, or after the ack. Then run requeue again: every dead
    letter is in its queue exactly once and the dead-letter queue, journal and lock are gone."""
    dead_queue, origin = f"{prefix}.work.dead", f"{prefix}.work"
    expected = [f"k-{i}" for i in range(6)]
    for task_id in expected:
        put_dead(amqp, dead_queue, origin, "t.fail", task_id, "ValueError: boom")
    child = subprocess.run([sys.executable, "-c", CHILD, str(world), origin, point, "3"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert child.returncode == -9, child.stdout + child.stderr

    if point == "after-confirm":
        # The window itself: the third letter is back in the dead-letter queue and its
        # copy is in the queue; the journal holds the three copies that went out.
        assert depth(amqp, origin) == 3 and depth(amqp, dead_queue) == 4
        assert depth(amqp, dl.journal_queue(dead_queue)) == 3
    if point == "before-publish":
        assert depth(amqp, origin) == 2 and depth(amqp, dead_queue) == 4
    listed = amqtask("dead", "ls", config=world)
    assert "an interrupted requeue left moves to finish" in listed.stdout

    finished = amqtask("dead", "requeue", "-Q", origin, config=world)
    assert finished.returncode == 0, finished.stderr
    if point == "after-confirm":
        assert f"{dead_queue}: 1 moves of an interrupted requeue finished" in finished.stdout
        assert f"{dead_queue} -> {origin}: 3 moved" in finished.stdout
    assert sorted(ids_in(amqp, origin)) == expected
    assert depth(amqp, dead_queue) == 0
    assert depth(amqp, dl.journal_queue(dead_queue)) is None
    assert depth(amqp, dl.lock_queue(dead_queue)) is None


def test_requeue_killed_between_the_queues_confirm_and_its_record_sends_one_again_as_the_same(
        world, amqp, prefix):
    """The one window where a move is repeated: the third copy is confirmed by its
    queue, the run dies before recording it. The rerun sends that letter again; both
    copies carry the same x-amqtask-redrive-id, and nothing is lost."""
    dead_queue, origin = f"{prefix}.work.dead", f"{prefix}.work"
    expected = [f"k-{i}" for i in range(6)]
    for task_id in expected:
        put_dead(amqp, dead_queue, origin, "t.fail", task_id, "ValueError: boom")
    child = subprocess.run([sys.executable, "-c", CHILD, str(world), origin, "before-record", "3"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert child.returncode == -9, child.stdout + child.stderr
    assert depth(amqp, origin) == 3 and depth(amqp, dead_queue) == 4
    assert depth(amqp, dl.journal_queue(dead_queue)) == 2  # only what was recorded

    finished = amqtask("dead", "requeue", "-Q", origin, config=world)
    assert finished.returncode == 0, finished.stderr
    assert f"{dead_queue} -> {origin}: 4 moved" in finished.stdout
    copies = [props.headers for _, props, _ in drain(amqp, origin)]
    assert sorted(h["id"] for h in copies) == sorted([*expected, "k-2"])
    twice = [h["x-amqtask-redrive-id"] for h in copies if h["id"] == "k-2"]
    assert len(twice) == 2 and twice[0] == twice[1]
    assert depth(amqp, dead_queue) == 0 and depth(amqp, dl.journal_queue(dead_queue)) is None


def full_queue(amqp, name: str, *, quorum: bool = False) -> None:
    """A queue that takes nothing more: at its length limit, refusing publishes."""
    arguments = {"x-max-length": 0, "x-overflow": "reject-publish"}
    if quorum:  # a quorum queue's limit is checked once it is over it: one message in first
        arguments = {"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"}
    amqp.queue_declare(name, durable=True, arguments=arguments)
    if quorum:
        amqp.basic_publish("", name, b"filler", pika.BasicProperties(headers={"id": "filler"}), mandatory=True)
        amqp.basic_publish("", name, b"filler", pika.BasicProperties(headers={"id": "filler"}), mandatory=True)


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
def test_a_full_queue_refuses_the_copies_and_a_later_requeue_still_moves_every_letter(world, amqp, prefix,
                                                                                   quorum):
    """The queue refuses (overflow reject-publish at max_length): its letters stay and
    nothing is recorded, so once there is room the next requeue moves them all rather
    than take them for moved."""
    dead_queue, origin = f"{prefix}.work.dead", f"{prefix}.full"
    amqp.track("queue", origin)
    full_queue(amqp, origin, quorum=quorum)
    kept = depth(amqp, origin)
    expected = [f"n-{i}" for i in range(3)]
    for task_id in expected:
        put_dead(amqp, dead_queue, origin, "t.fail", task_id, "ValueError: boom")

    refused = amqtask("dead", "requeue", config=world)
    assert refused.returncode == 0, refused.stderr
    assert f"queue '{origin}' refused the messages" in refused.stderr and "Traceback" not in refused.stderr
    assert f"{dead_queue}: 3 left" in refused.stdout
    assert ids_left(amqp, dead_queue) == expected and depth(amqp, origin) == kept
    assert depth(amqp, dl.journal_queue(dead_queue)) is None

    amqp.queue_delete(origin)  # room at last
    amqp.queue_declare(origin, durable=True)
    again = amqtask("dead", "requeue", config=world)
    assert again.returncode == 0, again.stderr
    assert f"{dead_queue} -> {origin}: 3 moved" in again.stdout and "finished" not in again.stdout
    assert ids_in(amqp, origin) == expected and depth(amqp, dead_queue) == 0


def test_a_queue_deleted_between_its_check_and_the_publish_keeps_its_letter(world, amqp, prefix):
    """The copy comes back unroutable (mandatory): the letter stays, the journal
    records nothing, and a rerun after the queue is back moves it."""
    from amqtask.amqp.deadletters import PikaDeadLetters
    from amqtask.topology.loader import load_settings

    dead_queue, origin = f"{prefix}.work.dead", f"{prefix}.work"
    for task_id in ("u-1", "u-2"):
        put_dead(amqp, dead_queue, origin, "t.fail", task_id, "ValueError: boom")
    settings = load_settings(world)

    class DeletedMeanwhile(PikaDeadLetters):
        def publish(self, queue, message):
            if queue == origin:
                amqp.queue_delete(origin)
            super().publish(queue, message)

    with DeletedMeanwhile(settings.broker) as broker:
        report = dl.requeue(broker, dl.targets(settings.topology, origin)[0])
    assert report.total == 0 and report.missing == (origin,)
    assert ids_left(amqp, dead_queue) == ["u-1", "u-2"]
    assert depth(amqp, dl.journal_queue(dead_queue)) is None

    amqp.queue_declare(origin, durable=True)
    rerun = amqtask("dead", "requeue", config=world)
    assert rerun.returncode == 0, rerun.stderr
    assert ids_in(amqp, origin) == ["u-1", "u-2"] and depth(amqp, dead_queue) == 0


def test_a_copy_never_confirmed_fails_within_publish_timeout_and_its_letter_stays(world, amqp, prefix, proxy):
    """The broker stops answering as the third copy is published: that publish fails
    after publish_timeout instead of waiting forever, its dead letter returns to its
    queue, nothing unconfirmed is recorded, and a rerun moves the rest exactly once."""
    import dataclasses

    from amqtask.amqp.deadletters import PikaDeadLetters
    from amqtask.errors import PublishError
    from amqtask.topology.loader import load_settings

    from .private_broker import wait_until

    dead_queue, origin = f"{prefix}.work.dead", f"{prefix}.work"
    expected = [f"s-{i}" for i in range(5)]
    for task_id in expected:
        put_dead(amqp, dead_queue, origin, "t.fail", task_id, "ValueError: boom")
    settings = load_settings(world, environ={"AMQTASK_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}//"})

    class SilencedAtTheThirdCopy(PikaDeadLetters):
        copies = 0

        def publish(self, queue, message):
            if queue == origin:
                SilencedAtTheThirdCopy.copies += 1
                if SilencedAtTheThirdCopy.copies == 3:
                    proxy.silence(True)
            super().publish(queue, message)

    broker_settings = dataclasses.replace(settings.broker, publish_timeout=1.0)
    with pytest.raises(PublishError, match="did not confirm .* within 1s") as raised:
        with SilencedAtTheThirdCopy(broker_settings) as broker:
            dl.requeue(broker, dl.targets(settings.topology, origin)[0])
    assert "the dead letter stays" in str(raised.value) and "x-amqtask-redrive-id" in str(raised.value)
    # The dropped connection's letter goes back to its place once the broker sees it gone.
    wait_until(lambda: depth(amqp, dead_queue) == 3, what="the unconfirmed letter to return")
    assert ids_left(amqp, dead_queue) == expected[2:]
    assert depth(amqp, dl.journal_queue(dead_queue)) == 2  # the two confirmed moves only

    proxy.silence(False)
    rerun = amqtask("dead", "requeue", config=world)
    assert rerun.returncode == 0, rerun.stderr
    assert ids_in(amqp, origin) == expected
    assert depth(amqp, dead_queue) == 0 and depth(amqp, dl.journal_queue(dead_queue)) is None


def test_connection_cut_mid_requeue_is_a_clear_error_and_a_rerun_finishes(world, amqp, prefix, proxy):
    """The connection drops right after a confirmed publish: the command fails with one
    line, and running it again moves each dead letter exactly once."""
    from amqtask.amqp.deadletters import PikaDeadLetters
    from amqtask.errors import BrokerError
    from amqtask.topology.loader import load_settings

    dead_queue, origin = f"{prefix}.work.dead", f"{prefix}.work"
    expected = [f"c-{i}" for i in range(5)]
    for task_id in expected:
        put_dead(amqp, dead_queue, origin, "t.fail", task_id, "ValueError: boom")
    settings = load_settings(world, environ={"AMQTASK_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}//"})

    class Cut(PikaDeadLetters):
        recorded = 0

        def publish(self, queue, message):
            super().publish(queue, message)
            if queue == dl.journal_queue(dead_queue):
                Cut.recorded += 1
                if Cut.recorded == 2:
                    proxy.cut()

    with pytest.raises(BrokerError, match="connection to the broker was lost"):
        with Cut(settings.broker) as broker:
            dl.requeue(broker, dl.targets(settings.topology, origin)[0])
    rerun = amqtask("dead", "requeue", config=world)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(ids_in(amqp, origin)) == expected
    assert depth(amqp, dead_queue) == 0 and depth(amqp, dl.journal_queue(dead_queue)) is None


def test_quorum_dead_letter_queue_is_not_reordered_by_ls(world, amqp, prefix):
    """Listing a quorum queue would count a delivery for each message and let RabbitMQ
    return them in an order of its own: ls does not touch one routing.yaml declares as
    quorum, and says why. --allow-reorder reads it anyway."""
    dead_queue = f"{prefix}.ledger_dead"
    expected = [f"q-{i}" for i in range(8)]
    for task_id in expected:
        put_dead(amqp, dead_queue, f"{prefix}.ledger", "t.post", task_id, "ValueError: boom")
    listed = amqtask("dead", "ls", "-Q", f"{prefix}.ledger", config=world)
    assert listed.returncode == 0, listed.stderr
    assert f"{dead_queue}: 8 messages not shown: {dead_queue} is a quorum queue" in listed.stdout
    shown = amqtask("dead", "show", "q-3", config=world)
    assert shown.returncode == 1 and "--allow-reorder" in shown.stderr
    assert ids_in_place(amqp, dead_queue) == expected
    anyway = amqtask("dead", "ls", "-Q", dead_queue, "--allow-reorder", config=world)
    assert sorted(line.split()[-3] for line in anyway.stdout.splitlines()[1:]) == expected
    moved = amqtask("dead", "requeue", "-Q", f"{prefix}.ledger", "--limit", "3", config=world)
    assert f"{dead_queue} -> {prefix}.ledger: 3 moved" in moved.stdout
    assert len(ids_in(amqp, f"{prefix}.ledger")) == 3 and len(ids_in(amqp, dead_queue)) == 5


def test_a_quorum_dead_letter_queue_with_a_delivery_limit_loses_nothing_to_being_read(world, amqp, prefix):
    """Every read of a quorum queue counts as a delivery (measured on RabbitMQ 3.10:
    a nack, a closed channel and a closed connection alike), and capped_dead drops a
    message returned at its x-delivery-limit (2). Listing it, and requeues and purges
    that leave letters in place, many more times than that keeps every letter: one
    at the limit is published to the queue again instead of being returned."""
    dead_queue, origin = f"{prefix}.capped_dead", f"{prefix}.capped"
    expected = [f"cap-{i}" for i in range(3)]
    for task_id in expected:
        put_dead(amqp, dead_queue, origin, "t.keep", task_id, "ValueError: boom")
    counts = set()
    for _ in range(3):
        for command in (("ls", "-Q", dead_queue, "--allow-reorder"), ("requeue", "--task", "t.other"),
                        ("purge", "-f", "-Q", dead_queue, "--task", "t.other")):
            done = amqtask("dead", *command, config=world)
            assert done.returncode == 0, done.stderr
        shown = amqtask("dead", "show", "cap-0", "-Q", dead_queue, "--allow-reorder", config=world)
        assert shown.returncode == 0, shown.stderr
        counts.add(int(re.search(r"x-delivery-count: (\d+)", shown.stdout)[1]) if "x-delivery-count" in
                   shown.stdout else 0)
    assert max(counts) >= 1  # the reads were counted
    listed = amqtask("dead", "ls", "-Q", dead_queue, "--allow-reorder", config=world)
    assert sorted(line.split()[-3] for line in listed.stdout.splitlines()[1:]) == expected
    moved = amqtask("dead", "requeue", "-Q", origin, config=world)
    assert f"{dead_queue} -> {origin}: 3 moved" in moved.stdout
    assert sorted(ids_in(amqp, origin)) == expected and depth(amqp, dead_queue) == 0


def test_letters_from_a_quorum_queue_in_a_classic_dead_letter_queue_are_listed(world, amqp, prefix):
    """A worker copies a quorum queue's x-delivery-count into the dead letter; the
    classic queue holding it does not count deliveries, so ls lists it."""
    dead_queue = f"{prefix}.work.dead"
    for task_id in ("h-1", "h-2"):
        put_dead(amqp, dead_queue, f"{prefix}.work", "t.fail", task_id, "ValueError: boom", **{"x-delivery-count": 0})
    listed = amqtask("dead", "ls", config=world)
    assert [line.split()[-3] for line in listed.stdout.splitlines()[1:]] == ["h-1", "h-2"], listed.stdout
    assert ids_in(amqp, dead_queue) == ["h-1", "h-2"]


def test_purge_everything_or_only_what_is_chosen(world, amqp, prefix):
    dead_queue = f"{prefix}.work.dead"
    for task_id, task in (("p1", "t.fail"), ("p2", "t.keep"), ("p3", "t.fail")):
        put_dead(amqp, dead_queue, f"{prefix}.work", task, task_id, "ValueError: boom")
    asked = amqtask("dead", "purge", "--task", "t.fail", config=world, input="n\n")
    assert asked.returncode == 1 and "aborted" in asked.stdout
    chosen = amqtask("dead", "purge", "--task", "t.fail", "-f", config=world)
    assert chosen.returncode == 0, chosen.stderr
    assert f"{dead_queue}: 2 deleted, 1 kept" in chosen.stdout
    everything = amqtask("dead", "purge", "-Q", f"{prefix}.work", "-f", config=world)
    assert f"{dead_queue}: 1 deleted" in everything.stdout
    assert depth(amqp, dead_queue) == 0
    unknown = amqtask("dead", "ls", "-Q", f"{prefix}.nothing-{uuid.uuid4().hex[:6]}", config=world)
    assert unknown.returncode == 0 and "no dead letters" in unknown.stdout
