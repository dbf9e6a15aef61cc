"""Dead letters without a broker: where they wait, what each says, what a re-drive
sends, and the requeue algorithm over an in-memory broker that can be interrupted."""
from __future__ import annotations

import datetime as dt
from contextlib import contextmanager

import pytest

from amqtask import deadletters as dl
from amqtask.deadletters import DeadLetter, Fetched, Selector, Target
from amqtask.errors import NackError, PublishError, UnroutableError
from amqtask.topology.loader import check_text

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
TOPOLOGY = check_text("""\
exchanges:
  x: {type: direct}
  dlx: {type: direct}
  fan: {type: fanout}
queues:
  plain: {bindings: [{exchange: x, routing_key: plain}]}
  billing: {dead_letter_exchange: dlx, dead_letter_routing_key: b, bindings: [{exchange: x, routing_key: b}]}
  refunds: {dead_letter_exchange: dlx, dead_letter_routing_key: b, bindings: [{exchange: x, routing_key: r}]}
  nowhere: {dead_letter_exchange: dlx, dead_letter_routing_key: zz, bindings: [{exchange: x, routing_key: n}]}
  keyless: {dead_letter_exchange: fan, bindings: [{exchange: x, routing_key: k}]}
  by_name: {dead_letter_exchange: '', dead_letter_routing_key: plain.dead, bindings: [{exchange: x, routing_key: y}]}
  shared_dead: {queue_type: quorum, bindings: [{exchange: dlx, routing_key: b}]}
  fan_dead: {bindings: [{exchange: fan}]}
  plain.dead: {}
  log: {queue_type: stream, bindings: [{exchange: x, routing_key: log}]}
""", environ={}).settings.topology


def test_where_dead_letters_wait():
    assert dl.dead_letter_queues(TOPOLOGY, "plain") == ("plain.dead",)
    assert dl.dead_letter_queues(TOPOLOGY, "billing") == ("shared_dead",)
    assert dl.dead_letter_queues(TOPOLOGY, "keyless") == ("fan_dead",)
    assert dl.dead_letter_queues(TOPOLOGY, "by_name") == ("plain.dead",)
    # A dead-letter exchange that routes nowhere: workers fall back to <queue>.dead.
    assert dl.dead_letter_queues(TOPOLOGY, "nowhere") == ("nowhere.dead",)
    assert dl.dead_letter_queues(TOPOLOGY, "not-in-yaml") == ("not-in-yaml.dead",)
    every = dl.all_dead_letter_queues(TOPOLOGY)
    assert every["shared_dead"] == ("billing", "refunds") and "log.dead" not in every


def test_what_dash_q_means():
    assert dl.targets(TOPOLOGY, "plain") == [Target("plain.dead")]
    assert dl.targets(TOPOLOGY, "billing") == [Target("shared_dead", frozenset({"billing"}), quorum=True)]
    assert dl.targets(TOPOLOGY, "shared_dead") == [Target("shared_dead", quorum=True)]
    assert dl.targets(TOPOLOGY, "other.dead") == [Target("other.dead")]
    assert {t.dead_queue for t in dl.targets(TOPOLOGY)} == set(dl.all_dead_letter_queues(TOPOLOGY))


def amqtask_letter(task_id="id-1", reason="ValueError: boom", **headers) -> DeadLetter:
    return DeadLetter("plain.dead", b'[[1], {}, {}]', {"correlation_id": task_id, "content_type": "application/json"},
                      {"task": "t.add", "id": task_id, "retries": 3, "x-amqtask-reason": reason,
                       "x-amqtask-queue": "plain", "x-amqtask-failed-at": "2024-05-01T11:58:30+00:00",
                       "x-amqtask-worker": "w@h", **headers})


def broker_letter() -> DeadLetter:
    deaths = [{"queue": "billing", "reason": "rejected", "count": 2, "exchange": "x", "routing-keys": ["b"],
               "time": NOW - dt.timedelta(hours=3)},
              {"queue": "amqtask.delay.03", "reason": "expired", "count": 1, "exchange": "amqtask.delay.03",
               "time": NOW - dt.timedelta(hours=4)}]
    return DeadLetter("shared_dead", b"{}", {"message_id": "m-9"},
                      {"x-death": deaths, "x-first-death-queue": "amqtask.delay.03", "x-delivery-count": 4})


def test_an_amqtask_dead_letter():
    letter = amqtask_letter()
    assert (letter.origin, letter.reason, letter.task, letter.task_id) == ("plain", "ValueError: boom", "t.add", "id-1")
    assert dl.format_age(letter.age(NOW)) == "1m" and letter.deaths == 1
    assert amqtask_letter(**{"x-amqtask-redriven": 2}).deaths == 3


def test_a_dead_letter_of_rabbitmq_itself():
    letter = broker_letter()
    assert letter.origin == "billing"  # the delay cascade's expiry is a wait, not a death
    assert letter.reason == "rejected (by the broker)"
    assert letter.task is None and letter.task_id == "m-9"
    assert dl.format_age(letter.age(NOW)) == "3h" and letter.deaths == 2


def test_identity_ignores_the_delivery_count_and_tells_deaths_apart():
    letter = broker_letter()
    recounted = DeadLetter(letter.dead_queue, letter.body, letter.properties,
                           {**letter.headers, "x-delivery-count": 9})
    assert recounted.identity == letter.identity
    assert amqtask_letter().identity == amqtask_letter().identity
    assert amqtask_letter().identity != amqtask_letter(**{"x-amqtask-failed-at": "2024-05-01T11:58:31+00:00"}).identity


def test_a_redriven_message_has_its_death_removed_and_its_redrive_recorded():
    out = dl.redriven(amqtask_letter(**{"x-delivery-count": 1, "x-amqtask-rate-slot": 5}), now=NOW)
    assert out.body == b'[[1], {}, {}]' and out.properties["correlation_id"] == "id-1"
    assert out.properties["delivery_mode"] == 2
    assert out.headers["retries"] == 0 and out.headers["task"] == "t.add"
    assert out.headers["x-amqtask-redriven"] == 1 and out.headers["x-amqtask-redriven-from"] == "plain.dead"
    assert out.headers["x-amqtask-redriven-reason"] == "ValueError: boom"
    assert out.headers["x-amqtask-redriven-at"] == NOW.isoformat()
    assert out.headers["x-amqtask-redrive-id"] == amqtask_letter(**{"x-delivery-count": 1,
                                                                   "x-amqtask-rate-slot": 5}).identity
    assert not set(dl.DEATH_HEADERS) & set(out.headers)
    twice = dl.redriven(amqtask_letter(**{"x-amqtask-redriven": 1}), now=NOW)
    assert twice.headers["x-amqtask-redriven"] == 2
    expiring = DeadLetter("q.dead", b"", {"expiration": "1000"}, {})
    assert "expiration" not in dl.redriven(expiring, now=NOW).properties


def test_selector():
    letter = amqtask_letter()
    assert Selector().matches(letter) and Selector().everything
    assert Selector(reason="valueerror").matches(letter) and not Selector(reason="KeyError").matches(letter)
    assert Selector(task="t.*").matches(letter) and not Selector(task="t.sub").matches(letter)
    assert not Selector(task="t.*").matches(broker_letter())  # no task header: only a reason filter finds it


# -- the requeue algorithm over an in-memory broker -----------------------------------
class Killed(BaseException):
    """The process dies here (BaseException: nothing in the algorithm may catch it)."""


class MemoryBroker:
    """Queues as lists; a reader's unacked messages go back in order on exit, as a
    classic queue does. A publish to a queue in `refusing` is nacked, to a missing
    queue returned, and to a queue in `silent` never confirmed (PublishError; with
    `arrives_anyway` the queue took it all the same). `after_publish(queue)` runs
    after each confirmed publish: it may raise Killed there."""

    def __init__(self) -> None:
        self.queues: dict[str, list[Fetched]] = {}
        self.locks: set[str] = set()
        self.after_publish = lambda queue: None
        self.refusing: set[str] = set()
        self.silent: set[str] = set()
        self.arrives_anyway = False
        self.published = 0
        self._tag = 0

    def put(self, queue: str, letter: DeadLetter) -> None:
        self._tag += 1
        self.queues.setdefault(queue, []).append(Fetched(self._tag, letter.body, letter.properties, letter.headers))

    def depth(self, queue):
        return len(self.queues[queue]) if queue in self.queues else None

    @contextmanager
    def reader(self, queue):
        source = self.queues.get(queue, [])
        taken: list[Fetched] = []

        class Reader:
            def get(self):
                if not source:
                    return None
                taken.append(source.pop(0))
                return taken[-1]

            def ack(self, tag):
                taken[:] = [f for f in taken if f.tag != tag]

        try:
            yield Reader()
        finally:
            source[:0] = taken  # back at the head, in the order taken

    @contextmanager
    def locked(self, name):
        if name in self.locks:
            raise dl.DeadLetterError("busy")
        self.locks.add(name)
        try:
            yield
        finally:
            self.locks.discard(name)

    def ensure_queue(self, name):
        self.queues.setdefault(name, [])

    def publish(self, queue, message):
        if queue not in self.queues:
            raise UnroutableError("", queue)
        if queue in self.refusing:
            raise NackError(f"{queue} is full")
        if queue in self.silent and not self.arrives_anyway:
            raise PublishError("not confirmed")
        self._tag += 1
        self.queues[queue].append(Fetched(self._tag, message.body, message.properties, message.headers))
        if queue in self.silent:
            raise PublishError("not confirmed")
        self.published += 1
        self.after_publish(queue)

    def delete_queue(self, name):
        self.queues.pop(name, None)

    def purge(self, queue):
        count, self.queues[queue] = len(self.queues[queue]), []
        return count


def ids(broker: MemoryBroker, queue: str) -> list[str]:
    return [f.headers["id"] for f in broker.queues.get(queue, [])]


@pytest.fixture
def memory():
    broker = MemoryBroker()
    broker.queues["plain"] = []
    for i in range(5):
        broker.put("plain.dead", amqtask_letter(f"id-{i}", "KeyError: x" if i == 2 else "ValueError: boom"))
    return broker


def test_requeue_moves_the_selected_letters_and_keeps_the_others_in_order(memory):
    report = dl.requeue(memory, Target("plain.dead"), select=Selector(reason="ValueError"), limit=3, now=lambda: NOW)
    assert report.moved == {"plain": 3} and report.finished == 0
    assert ids(memory, "plain") == ["id-0", "id-1", "id-3"]
    assert ids(memory, "plain.dead") == ["id-2", "id-4"]
    assert dl.journal_queue("plain.dead") not in memory.queues and not memory.locks


JOURNAL = dl.journal_queue("plain.dead")


def kill_at(broker: MemoryBroker, queue: str, nth: int) -> None:
    """Kill the run right after the `nth` confirmed publish to `queue`."""
    seen = []

    def maybe_die(published_to: str) -> None:
        if published_to == queue:
            seen.append(published_to)
            if len(seen) == nth:
                raise Killed

    broker.after_publish = maybe_die


def rerun(broker: MemoryBroker) -> dl.MoveReport:
    broker.locks.clear()  # the lock queue was exclusive: it went with the dead connection
    broker.after_publish = lambda queue: None
    return dl.requeue(broker, Target("plain.dead"), now=lambda: NOW)


def test_a_requeue_killed_between_record_and_ack_is_finished_not_repeated(memory):
    kill_at(memory, JOURNAL, 2)
    with pytest.raises(Killed):
        dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    assert ids(memory, "plain") == ["id-0", "id-1"]
    assert ids(memory, "plain.dead") == ["id-1", "id-2", "id-3", "id-4"]  # id-1 both here and moved
    report = rerun(memory)
    assert report.finished == 1 and report.moved == {"plain": 3}
    assert ids(memory, "plain") == ["id-0", "id-1", "id-2", "id-3", "id-4"]
    assert ids(memory, "plain.dead") == [] and JOURNAL not in memory.queues


def test_a_requeue_killed_between_confirm_and_record_sends_one_again_marked_as_the_same(memory):
    """The one window where a message is sent twice: both copies say which dead letter
    they were made from, so the duplicate can be told."""
    kill_at(memory, "plain", 2)
    with pytest.raises(Killed):
        dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    report = rerun(memory)
    assert report.finished == 0 and report.moved == {"plain": 4}
    assert ids(memory, "plain") == ["id-0", "id-1", "id-1", "id-2", "id-3", "id-4"]
    first, second = memory.queues["plain"][1:3]
    assert first.headers[dl.REDRIVE_ID] == second.headers[dl.REDRIVE_ID]
    assert ids(memory, "plain.dead") == [] and JOURNAL not in memory.queues


def test_a_queue_that_refuses_the_copies_keeps_its_letters_and_no_record_is_trusted_later(memory):
    """A full queue (overflow reject-publish) nacks: its letters stay, nothing is
    recorded, and once there is room the next run moves every one of them."""
    memory.refusing.add("plain")
    report = dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    assert report.total == 0 and report.refused == ("plain",) and memory.published == 0
    assert ids(memory, "plain.dead") == [f"id-{i}" for i in range(5)]
    assert JOURNAL not in memory.queues
    memory.refusing.clear()
    report = rerun(memory)
    assert report.finished == 0 and report.moved == {"plain": 5}
    assert ids(memory, "plain") == [f"id-{i}" for i in range(5)] and ids(memory, "plain.dead") == []


def test_a_queue_deleted_after_it_was_looked_up_keeps_its_letters(memory):
    """The copy would be returned (mandatory): the letter stays, and the journal is
    never the only place a copy reaches."""
    real_depth = memory.depth
    memory.depth = lambda queue: 0 if queue == "plain" else real_depth(queue)  # looked up before its deletion
    del memory.queues["plain"]
    report = dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    assert report.total == 0 and report.missing == ("plain",)
    assert ids(memory, "plain.dead") == [f"id-{i}" for i in range(5)] and JOURNAL not in memory.queues


@pytest.mark.parametrize("arrived", [False, True], ids=["lost-in-transit", "taken-unconfirmed"])
def test_a_copy_not_confirmed_in_time_stops_the_run_and_its_letter_stays(memory, arrived):
    memory.silent.add("plain")
    memory.arrives_anyway = arrived
    with pytest.raises(PublishError, match=f"{dl.REDRIVE_ID} "):
        dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    assert ids(memory, "plain.dead") == [f"id-{i}" for i in range(5)]
    assert JOURNAL not in memory.queues  # nothing recorded: the next run sends it
    memory.silent.clear()
    report = rerun(memory)
    assert report.finished == 0 and report.moved == {"plain": 5}
    assert ids(memory, "plain") == (["id-0"] if arrived else []) + [f"id-{i}" for i in range(5)]


def test_a_journal_entry_that_does_not_say_its_queue_confirmed_is_not_trusted(memory):
    """An entry published together with its copy (one publish to two queues) may
    describe a copy the queue refused: its letter is sent, not acked as moved."""
    letter = amqtask_letter("id-0")
    memory.put(JOURNAL, DeadLetter(JOURNAL, letter.body, {}, {dl.REDRIVE_ID: letter.identity}))
    report = dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    assert report.finished == 0 and report.moved == {"plain": 5}
    assert ids(memory, "plain") == [f"id-{i}" for i in range(5)] and JOURNAL not in memory.queues


def test_letters_that_die_again_during_a_requeue_wait_for_the_next_one(memory):
    def fail_at_once(queue):  # a worker that fails every re-driven task straight back
        if queue != "plain":
            return
        again = memory.queues[queue].pop()
        memory.put("plain.dead", DeadLetter("plain.dead", again.body, again.properties,
                                            {**again.headers, "x-amqtask-reason": "ValueError: again"}))

    memory.after_publish = fail_at_once
    report = dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    assert report.total == 5  # each once, not round and round
    assert len(memory.queues["plain.dead"]) == 5


def test_a_letter_without_a_queue_or_whose_queue_is_gone_stays(memory):
    memory.put("plain.dead", DeadLetter("plain.dead", b"", {}, {"id": "orphan"}))
    del memory.queues["plain"]
    report = dl.requeue(memory, Target("plain.dead"), now=lambda: NOW)
    assert report.total == 0 and report.missing == ("plain",)
    assert len(memory.queues["plain.dead"]) == 6 and memory.published == 0


def test_purge_everything_or_a_selection(memory):
    assert dl.purge(memory, Target("plain.dead"), select=Selector(reason="KeyError")).deleted == 1
    assert ids(memory, "plain.dead") == ["id-0", "id-1", "id-3", "id-4"]
    assert dl.purge(memory, Target("plain.dead")).deleted == 4


def test_listing_a_quorum_queue_is_refused_unless_allowed(memory):
    listing = dl.list_letters(memory, Target("plain.dead", quorum=True))
    assert listing.quorum and listing.letters == () and listing.depth == 5
    anyway = dl.list_letters(memory, Target("plain.dead", quorum=True), allow_reorder=True, limit=2)
    assert [letter.task_id for letter in anyway.letters] == ["id-0", "id-1"]
    assert ids(memory, "plain.dead") == [f"id-{i}" for i in range(5)]


def test_the_dead_queue_a_worker_declares_for_a_quorum_queue_is_quorum_too():
    topology = check_text("queues:\n  jobs: {queue_type: quorum}\n  plain: {}\n", environ={}).settings.topology
    assert dl.targets(topology, "jobs") == [Target("jobs.dead", quorum=True)]
    assert dl.targets(topology, "jobs.dead") == [Target("jobs.dead", quorum=True)]
    assert dl.targets(topology, "plain") == [Target("plain.dead")]


def test_a_letter_whose_return_would_reach_the_delivery_limit_is_published_again_instead(memory):
    """A quorum queue drops a message put back at its x-delivery-limit: reading leaves
    such a letter in place by publishing it again (its count reset) and removing the old."""
    topology = check_text("""\
exchanges: {dlx: {type: direct}}
queues:
  capped: {dead_letter_exchange: dlx, dead_letter_routing_key: c}
  capped_dead: {queue_type: quorum, arguments: {x-delivery-limit: 2}, bindings: [{exchange: dlx, routing_key: c}]}
""", environ={}).settings.topology
    [target] = dl.targets(topology, "capped_dead")
    assert target == Target("capped_dead", quorum=True, delivery_limit=2)
    memory.queues["capped_dead"] = []
    for task_id, count in (("fresh", 0), ("worn", 1), ("last", 2)):
        memory.put("capped_dead", amqtask_letter(task_id, **{"x-delivery-count": count}))
    listing = dl.list_letters(memory, target, allow_reorder=True)
    assert [letter.task_id for letter in listing.letters] == ["fresh", "worn", "last"]
    assert ids(memory, "capped_dead") == ["fresh", "worn", "last"]
    again = memory.queues["capped_dead"][-1]
    assert "x-delivery-count" not in again.headers and memory.published == 1
    unlimited = Target("capped_dead", quorum=True)
    assert not unlimited.dropped_if_returned(again) and not Target("plain.dead").dropped_if_returned(again)
