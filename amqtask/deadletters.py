"""Dead letters: where they wait, what each one says, and moving them back.

A message a worker will not run is republished with `x-amqtask-reason`,
`x-amqtask-queue`, `x-amqtask-failed-at` and `x-amqtask-worker` to its queue's
dead-letter exchange, or to `<queue>.dead`; a message RabbitMQ dead-letters itself
(rejected, expired, over a length limit) carries `x-death` instead. This module reads
both kinds, and re-drives them to the queue they came from.

No wire I/O here: the broker is reached through a `DeadLetterBroker` (implemented
with pika in `amqtask.amqp.deadletters`), so the algorithm reads top to bottom.

Reading without a management plugin means taking messages with `basic.get` and
manual acks and returning the ones kept, in the order they were taken, at the end;
a run never takes the same message twice, so it never loops. On a classic queue
(every `<queue>.dead` of a classic queue is one) the broker puts returned messages back where they were.
A quorum queue counts each return as a delivery (`x-delivery-count` + 1) and RabbitMQ
3.x puts returned messages back in an order of its own, so listing a quorum
dead-letter queue (one routing.yaml declares, or the `.dead` queue of a quorum
queue) is refused unless asked for (`allow_reorder`). Every way of putting a message
back counts (RabbitMQ 3.10: a nack, a closed channel or connection alike), so there is
no reading a quorum queue without counting. A letter whose return would reach the
queue's `x-delivery-limit` (which drops it) is published to the queue again instead
(see `keep`); that is only known for a limit routing.yaml declares, not for one set by
a policy (or RabbitMQ 4's default of 20).

Re-drive order: publish the copy to the original queue (publisher confirms,
`mandatory`, at most publish_timeout), then record it in a journal queue,
`amqtask.redrive.<dead queue>`, then ack the dead letter. A journal entry says one
thing only: the original queue confirmed this copy. A copy the queue refuses (full,
with `overflow: reject-publish`), cannot be routed (the queue was deleted meanwhile)
or does not confirm in time is never recorded, and its dead letter stays. A run
killed after the record and before the ack leaves the dead letter in its queue
(unacked messages return); the next run sees the record, acks the dead letter
without publishing it again, and deletes the journal when done. So a run
interrupted anywhere never loses a message. It duplicates one only when it stops
between the queue's confirm and the record (or a confirm that timed out was in fact
taken): the next run sends that letter again, and both copies carry the same
`x-amqtask-redrive-id`. One requeue or purge runs per dead-letter queue at a time
(an exclusive lock queue), because a run must be able to tell a finished move from
one in progress.
"""
from __future__ import annotations

import datetime as dt
import decimal
import fnmatch
import hashlib
import json
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

from .errors import AmqtaskError, NackError, PublishError, UnroutableError
from .topology.model import DEFAULT_EXCHANGE, Topology
from .worker.delays import DEAD_SUFFIX, DELIVERY_COUNT, DELIVERY_LIMIT, dead_letter_queue_for


REASON = "x-amqtask-reason"
QUEUE = "x-amqtask-queue"
FAILED_AT = "x-amqtask-failed-at"
WORKER = "x-amqtask-worker"
REDRIVEN = "x-amqtask-redriven"  # how many times the message was re-driven
REDRIVEN_AT = "x-amqtask-redriven-at"
REDRIVEN_FROM = "x-amqtask-redriven-from"
REDRIVEN_REASON = "x-amqtask-redriven-reason"  # why it had died before the last re-drive
REDRIVE_ID = "x-amqtask-redrive-id"  # the identity of the dead letter it was made from
# On a journal entry: the queue that confirmed the copy. Entries without it (written by
# an earlier amqtask, published together with a copy that may have been refused) are
# not trusted: their dead letters are sent again.
REACHED = "x-amqtask-redrive-reached"
# Headers that describe one death; a re-driven message starts without them.
DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                 "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", REASON, QUEUE, FAILED_AT,
                 WORKER, "x-delivery-count", "x-amqtask-rate-slot")
DELAY_PREFIX = "amqtask.delay."
MAX_NAME_BYTES = 255


class DeadLetterError(AmqtaskError):
    """A dead-letter operation cannot go ahead (queue busy, missing, or a quorum queue)."""


# -- where dead letters wait ---------------------------------------------------------
def dead_letter_queues(topology: Topology, queue: str) -> tuple[str, ...]:
    """The queues `queue`'s dead letters land in: what its dead-letter exchange routes
    the dead-letter routing key to (every queue bound below it when there is no key),
    else `<queue>.dead`, where workers put them. A dead-letter exchange that routes
    nowhere sends the worker's dead letters to `<queue>.dead` too."""
    spec = topology.queues.get(queue)
    dlx = spec.dead_letter_exchange if spec is not None else None
    if spec is None or dlx is None:
        return (queue + DEAD_SUFFIX,)
    key = spec.arguments.get("x-dead-letter-routing-key")
    if dlx == DEFAULT_EXCHANGE:
        found: Iterable[str] = [str(key)] if key is not None and str(key) in topology.queues else []
    elif key is not None and dlx in topology.exchanges and topology.exchanges[dlx].type != "headers":
        found = topology.route(dlx, str(key))
    else:
        found = _queues_below(topology, dlx)
    return tuple(sorted(found)) or (queue + DEAD_SUFFIX,)


def _queues_below(topology: Topology, exchange: str) -> set[str]:
    """Every queue bound to `exchange` or to an exchange bound below it."""
    queues: set[str] = set()
    seen: set[str] = set()
    pending = [exchange]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for binding in topology.bindings_from(name):
            if binding.to_exchange:
                pending.append(binding.destination)
            elif binding.destination in topology.queues:
                queues.add(binding.destination)
    return queues


def all_dead_letter_queues(topology: Topology) -> dict[str, tuple[str, ...]]:
    """Every dead-letter queue of routing.yaml's queues -> the queues feeding it
    (streams are left out: they never dead-letter)."""
    out: dict[str, list[str]] = {}
    for name, spec in topology.queues.items():
        if spec.queue_type == "stream":
            continue
        for dead in dead_letter_queues(topology, name):
            out.setdefault(dead, []).append(name)
    return {dead: tuple(origins) for dead, origins in out.items()}


@dataclass(frozen=True)
class Target:
    """A dead-letter queue to read, and the origin queues whose letters count (None: all)."""

    dead_queue: str
    origins: frozenset[str] | None = None
    quorum: bool = False  # a quorum queue: reading it counts deliveries and reorders it
    delivery_limit: int | None = None  # its x-delivery-limit in routing.yaml (quorum queues only)

    def wants(self, letter: "DeadLetter") -> bool:
        return self.origins is None or letter.origin in self.origins

    def dropped_if_returned(self, fetched: "Fetched") -> bool:
        """Whether putting `fetched` back would make RabbitMQ drop it: a quorum queue
        counts every return as a delivery (a nack, a closed channel or connection
        alike), and drops (or dead-letters) a message returned with x-delivery-count
        at its x-delivery-limit."""
        if not self.quorum or self.delivery_limit is None:
            return False
        count = fetched.headers.get(DELIVERY_COUNT, 0)
        return isinstance(count, int) and count >= self.delivery_limit


def targets(topology: Topology, queue: str | None = None) -> list[Target]:
    """What `-Q QUEUE` means: a dead-letter queue itself (every letter in it), or a
    queue whose dead letters to read (a shared dead-letter queue is filtered to the
    letters that came from it). Without a queue: every dead-letter queue."""
    every = all_dead_letter_queues(topology)

    def target(dead: str, origins: frozenset[str] | None = None) -> Target:
        spec = topology.queues.get(dead)
        if spec is None and dead.endswith(DEAD_SUFFIX):  # a `<queue>.dead` a worker declared: as its queue
            spec = dead_letter_queue_for(dead[: -len(DEAD_SUFFIX)], topology)
        quorum = spec is not None and spec.queue_type == "quorum"
        limit = spec.arguments.get(DELIVERY_LIMIT) if spec is not None and quorum else None
        return Target(dead, origins, quorum, limit if isinstance(limit, int) else None)

    if queue is None:
        return [target(dead) for dead in every]
    if queue in every or (queue.endswith(DEAD_SUFFIX) and queue not in topology.queues):
        return [target(queue)]
    # `<queue>.dead` holds only its queue's letters; a dead-letter exchange's queue may hold others' too.
    return [target(dead, None if dead == queue + DEAD_SUFFIX else frozenset({queue}))
            for dead in dead_letter_queues(topology, queue)]


def journal_queue(dead_queue: str) -> str:
    """The journal of re-drives out of `dead_queue` (see the module's docstring)."""
    return _bounded(f"amqtask.redrive.{dead_queue}")


def lock_queue(dead_queue: str) -> str:
    return _bounded(f"amqtask.redrive.{dead_queue}.lock")


def _bounded(name: str) -> str:
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    return f"amqtask.redrive.{hashlib.sha256(name.encode()).hexdigest()}" + (".lock" if name.endswith(".lock") else "")


# -- one dead letter -----------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    """A message taken from a queue and not yet settled."""

    tag: int
    body: bytes
    properties: Mapping[str, Any]  # content_type, correlation_id, ... (None values left out)
    headers: Mapping[str, Any]
    redelivered: bool = False


@dataclass(frozen=True)
class DeadLetter:
    dead_queue: str
    body: bytes
    properties: Mapping[str, Any]
    headers: Mapping[str, Any]

    @property
    def task(self) -> str | None:
        task = self.headers.get("task")
        return task if isinstance(task, str) else None

    @property
    def task_id(self) -> str | None:
        for value in (self.headers.get("id"), self.properties.get("correlation_id"),
                      self.properties.get("message_id")):
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def origin(self) -> str | None:
        """The queue it died in."""
        queue = self.headers.get(QUEUE)
        if isinstance(queue, str) and queue:
            return queue
        death = self._death()
        if death is not None and isinstance(death.get("queue"), str):
            return str(death["queue"])
        first = self.headers.get("x-first-death-queue")
        if isinstance(first, str) and first:
            return first
        if self.dead_queue.endswith(DEAD_SUFFIX):
            return self.dead_queue[: -len(DEAD_SUFFIX)]
        return None

    @property
    def reason(self) -> str:
        reason = self.headers.get(REASON)
        if isinstance(reason, str):
            return reason
        death = self._death()
        if death is not None:
            return f"{death.get('reason', 'dead-lettered')} (by the broker)"
        first = self.headers.get("x-first-death-reason")
        return f"{first} (by the broker)" if isinstance(first, str) else "(no reason given)"

    @property
    def failed_at(self) -> dt.datetime | None:
        text = self.headers.get(FAILED_AT)
        if isinstance(text, str):
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                return None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
        death = self._death()
        when = death.get("time") if death is not None else None
        return when if isinstance(when, dt.datetime) else None

    @property
    def deaths(self) -> int:
        """How many times it has been dead-lettered, this time included."""
        counted = 0
        for death in self._deaths():
            count = death.get("count", 1)
            counted += count if isinstance(count, int) and not isinstance(count, bool) else 1
        redriven = self.headers.get(REDRIVEN)
        before = redriven if isinstance(redriven, int) and not isinstance(redriven, bool) else 0
        return before + max(counted, 1)

    def age(self, now: dt.datetime) -> dt.timedelta | None:
        failed = self.failed_at
        return None if failed is None else max(dt.timedelta(0), now - failed)

    @property
    def identity(self) -> str:
        """Stable across redeliveries of this message; differs between two deaths."""
        headers = {k: v for k, v in self.headers.items() if k != "x-delivery-count"}
        canonical = json.dumps([self.dead_queue, dict(self.properties), headers, self.body.hex()],
                               sort_keys=True, default=_canonical)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def _deaths(self) -> list[Mapping[str, Any]]:
        """x-death entries, leaving out the delay cascade's expiries (those are waits)."""
        deaths = self.headers.get("x-death")
        if not isinstance(deaths, list):
            return []
        return [d for d in deaths if isinstance(d, Mapping)
                and not str(d.get("queue", "")).startswith(DELAY_PREFIX)]

    def _death(self) -> Mapping[str, Any] | None:
        deaths = self._deaths()
        return deaths[0] if deaths else None  # RabbitMQ keeps the most recent first


def _canonical(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    return repr(value)


def letter_of(dead_queue: str, fetched: Fetched) -> DeadLetter:
    return DeadLetter(dead_queue, fetched.body, dict(fetched.properties), dict(fetched.headers))


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: body, properties (without headers) and headers."""

    body: bytes
    properties: Mapping[str, Any]
    headers: Mapping[str, Any]


def redriven(letter: DeadLetter, *, now: dt.datetime) -> Outgoing:
    """The message to send back: the original, without the traces of its death, with
    its retry count reset and the re-drive recorded in headers."""
    headers = {k: v for k, v in letter.headers.items() if k not in DEATH_HEADERS}
    if "retries" in headers or "task" in headers:
        headers["retries"] = 0
    previous = letter.headers.get(REDRIVEN)
    headers[REDRIVEN] = (previous if isinstance(previous, int) and not isinstance(previous, bool) else 0) + 1
    headers[REDRIVEN_AT] = now.isoformat()
    headers[REDRIVEN_FROM] = letter.dead_queue
    headers[REDRIVEN_REASON] = letter.reason[:1000]
    headers[REDRIVE_ID] = letter.identity
    # A per-message TTL would expire it again; persistent, as every task message is.
    properties = {k: v for k, v in letter.properties.items() if k != "expiration"}
    properties["delivery_mode"] = 2
    return Outgoing(letter.body, properties, headers)


# -- choosing ------------------------------------------------------------------------
@dataclass(frozen=True)
class Selector:
    """`--reason TEXT` (a case-insensitive substring) and `--task NAME` (a name or a glob)."""

    reason: str | None = None
    task: str | None = None

    @property
    def everything(self) -> bool:
        return self.reason is None and self.task is None

    def matches(self, letter: DeadLetter) -> bool:
        if self.reason is not None and self.reason.lower() not in letter.reason.lower():
            return False
        if self.task is not None and not fnmatch.fnmatchcase(letter.task or "", self.task):
            return False
        return True


# -- the broker, as this module needs it ---------------------------------------------
class Reader(Protocol):
    def get(self) -> Fetched | None:
        """The next message not taken yet, or None when the queue has no more."""

    def ack(self, tag: int) -> None:
        """Remove a taken message from the queue."""


class DeadLetterBroker(Protocol):
    def depth(self, queue: str) -> int | None:
        """Ready messages in `queue`, or None when it does not exist."""

    def reader(self, queue: str) -> AbstractContextManager[Reader]:
        """Take messages with manual acks; on exit every taken message not acked goes
        back, in the order taken. A queue that does not exist reads as empty."""

    def locked(self, name: str) -> AbstractContextManager[None]:
        """Hold the exclusive lock queue `name`; raise DeadLetterError when another
        connection holds it."""

    def ensure_queue(self, name: str) -> None:
        """Declare a durable classic queue."""

    def publish(self, queue: str, message: Outgoing) -> None:
        """Publish through the default exchange to `queue` (mandatory) and return once
        the broker has confirmed it. Raises UnroutableError when no such queue exists,
        NackError when the broker refuses it, PublishError when no confirm comes
        within publish_timeout (then it may or may not be in the queue)."""

    def delete_queue(self, name: str) -> None: ...

    def purge(self, queue: str) -> int: ...


# -- reading -------------------------------------------------------------------------
@dataclass(frozen=True)
class Listing:
    target: Target
    depth: int | None  # None: the dead-letter queue does not exist
    letters: tuple[DeadLetter, ...]
    quorum: bool = False  # not listed: a quorum queue, and reordering it was not allowed
    pending_moves: int = 0  # moves an interrupted requeue left to finish


def list_letters(broker: DeadLetterBroker, target: Target, *, limit: int | None = None,
                 allow_reorder: bool = False) -> Listing:
    """The first `limit` dead letters of `target` (all when None), left where they are."""
    depth = broker.depth(target.dead_queue)
    pending = broker.depth(journal_queue(target.dead_queue)) or 0
    if not depth:
        return Listing(target, depth, (), pending_moves=pending)
    if target.quorum and not allow_reorder:
        return Listing(target, depth, (), quorum=True, pending_moves=pending)
    letters: list[DeadLetter] = []
    with broker.reader(target.dead_queue) as reader:
        for fetched in _taken(reader, depth):
            keep(broker, reader, target, fetched)
            letter = letter_of(target.dead_queue, fetched)
            if target.wants(letter):
                letters.append(letter)
                if limit is not None and len(letters) >= limit:
                    break
    return Listing(target, depth, tuple(letters), pending_moves=pending)


def keep(broker: DeadLetterBroker, reader: Reader, target: Target, fetched: Fetched) -> None:
    """Leave a taken letter in its queue. Normally it is returned when the reader
    closes; one that the return would make RabbitMQ drop (Target.dropped_if_returned)
    is published to the queue again instead, confirmed, and only then removed: it
    moves to the back of the queue with its delivery count reset. Killed in between,
    the letter is there twice (the same identity; a requeue sends both)."""
    if not target.dropped_if_returned(fetched):
        return
    headers = {k: v for k, v in fetched.headers.items() if k != DELIVERY_COUNT}
    broker.publish(target.dead_queue, Outgoing(fetched.body, fetched.properties, headers))
    reader.ack(fetched.tag)


def find_letter(broker: DeadLetterBroker, candidates: list[Target], task_id: str, *,
                allow_reorder: bool = False) -> DeadLetter | None:
    """The dead letter whose task id (or correlation or message id) is `task_id`."""
    for target in candidates:
        listing = list_letters(broker, target, allow_reorder=allow_reorder)
        if listing.quorum:
            raise DeadLetterError(quorum_refusal(target.dead_queue))
        for letter in listing.letters:
            if task_id in (letter.task_id, letter.properties.get("correlation_id"),
                           letter.properties.get("message_id")):
                return letter
    return None


def quorum_refusal(dead_queue: str) -> str:
    return (f"{dead_queue} is a quorum queue: RabbitMQ counts every message shown as a delivery and may change "
            "their order when they are returned; pass --allow-reorder to read it anyway "
            "(requeue and purge read it too: they remove what they choose and return the rest)")


# -- moving --------------------------------------------------------------------------
@dataclass(frozen=True)
class MoveReport:
    dead_queue: str
    moved: Mapping[str, int] = field(default_factory=dict)  # origin queue -> messages re-driven
    finished: int = 0  # moves an interrupted run had published; their dead letters acked now
    no_origin: int = 0  # left: no queue to send them back to
    missing: tuple[str, ...] = ()  # origin queues that do not exist; their letters were left
    refused: tuple[str, ...] = ()  # origin queues that refused a copy (nack); their letters were left

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def requeue(broker: DeadLetterBroker, target: Target, *, select: Selector = Selector(),
            limit: int | None = None, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
            ) -> MoveReport:
    """Send `target`'s selected dead letters back to the queues they died in, at most
    `limit`, with confirms; interrupted anywhere, nothing is lost (module docstring)."""
    dead_queue = target.dead_queue
    journal = journal_queue(dead_queue)
    move = _Move(broker, journal, now)
    with broker.locked(lock_queue(dead_queue)):
        # Only what is there now: a moved task that dies again while this runs joins
        # the queue behind them, and moving it again would go round in circles.
        budget = broker.depth(dead_queue) or 0
        with broker.reader(journal) as journal_reader, broker.reader(dead_queue) as reader:
            done = _published_moves(journal_reader)
            for fetched in _taken(reader, budget):
                letter = letter_of(dead_queue, fetched)
                if letter.headers.get(REDRIVE_ID) in move.sent:
                    keep(broker, reader, target, fetched)
                    continue  # died again already: it stays for the next run
                if done[letter.identity] > 0:
                    done[letter.identity] -= 1  # its queue confirmed its copy before an interruption
                    reader.ack(fetched.tag)
                    move.finished += 1
                    continue
                full = limit is not None and move.total >= limit
                if full and not +done:
                    keep(broker, reader, target, fetched)
                    break  # nothing more to move, and no interrupted move left to finish
                if not full and target.wants(letter) and select.matches(letter) and move.send(letter):
                    try:
                        move.record(letter)
                    except AmqtaskError:
                        reader.ack(fetched.tag)  # its queue has the copy: only the record is missing
                        raise
                    # Killed here, the dead letter returns to its queue and the record of
                    # its copy is in the journal: the next run acks it, once.
                    reader.ack(fetched.tag)
                else:
                    keep(broker, reader, target, fetched)
        # Both readers are closed: every ack is settled, the rest returned in order.
        if move.journal_ready or broker.depth(journal) is not None:
            broker.delete_queue(journal)  # every move it records is now complete
    return move.report(dead_queue)


class _Move:
    """One requeue run's publishing side and tally."""

    def __init__(self, broker: DeadLetterBroker, journal: str, now: Callable[[], dt.datetime]) -> None:
        self.broker, self.journal, self.now = broker, journal, now
        self.moved: Counter[str] = Counter()
        self.sent: set[str] = set()  # identities of the letters this run moved
        self.finished = self.no_origin = 0
        self.present: set[str] = set()
        self.missing: set[str] = set()
        self.refused: set[str] = set()
        self.journal_ready = False

    @property
    def total(self) -> int:
        return self.moved.total()

    def send(self, letter: DeadLetter) -> bool:
        """Publish `letter` back to its queue; True once that queue has confirmed the
        copy, False when the letter must stay (no queue, or the queue refused it)."""
        origin = letter.origin
        if origin is None:
            self.no_origin += 1
            return False
        if origin in self.refused or not self._exists(origin):
            return False
        try:
            self.broker.publish(origin, redriven(letter, now=self.now()))
        except UnroutableError:
            self.present.discard(origin)  # deleted since it was looked up
            self.missing.add(origin)
            return False
        except NackError:
            self.refused.add(origin)  # full (overflow reject-publish): its other letters would be refused too
            return False
        except PublishError as exc:
            raise PublishError(f"{exc}; the dead letter stays in {letter.dead_queue}. If {origin!r} took the copy "
                               f"after all, the next requeue sends it again, and both copies carry "
                               f"{REDRIVE_ID} {letter.identity}") from None
        self.sent.add(letter.identity)
        self.moved[origin] += 1
        return True

    def record(self, letter: DeadLetter) -> None:
        """Write in the journal that `letter`'s queue confirmed its copy (after `send`)."""
        if not self.journal_ready:
            self.broker.ensure_queue(self.journal)
            self.journal_ready = True
        origin = letter.origin or ""
        self.broker.publish(self.journal, Outgoing(b"", {"delivery_mode": 2},
                                                   {REDRIVE_ID: letter.identity, REACHED: origin}))

    def _exists(self, queue: str) -> bool:
        if queue not in self.present and queue not in self.missing:
            (self.present if self.broker.depth(queue) is not None else self.missing).add(queue)
        return queue in self.present

    def report(self, dead_queue: str) -> MoveReport:
        return MoveReport(dead_queue, dict(self.moved), self.finished, self.no_origin, tuple(sorted(self.missing)),
                          tuple(sorted(self.refused)))


def _taken(reader: Reader, budget: int | None) -> Iterator[Fetched]:
    """Messages from `reader`, at most `budget` of them (None: until the queue is empty)."""
    taken = 0
    while budget is None or taken < budget:
        fetched = reader.get()
        if fetched is None:
            return
        taken += 1
        yield fetched


def _published_moves(journal: Reader) -> Counter[str]:
    """The dead letters whose copies an earlier run's queues confirmed (the entries
    are held until the run ends)."""
    done: Counter[str] = Counter()
    for entry in _taken(journal, None):
        identity = entry.headers.get(REDRIVE_ID)
        if isinstance(identity, str) and isinstance(entry.headers.get(REACHED), str):
            done[identity] += 1
    return done


@dataclass(frozen=True)
class PurgeReport:
    dead_queue: str
    deleted: int
    left: int = 0


def purge(broker: DeadLetterBroker, target: Target, *, select: Selector = Selector()) -> PurgeReport:
    """Delete `target`'s selected dead letters; the others stay, in order."""
    dead_queue = target.dead_queue
    with broker.locked(lock_queue(dead_queue)):
        if broker.depth(dead_queue) is None:
            return PurgeReport(dead_queue, 0)
        if select.everything and target.origins is None:
            deleted = broker.purge(dead_queue)
            if broker.depth(journal_queue(dead_queue)) is not None:
                broker.delete_queue(journal_queue(dead_queue))  # nothing left for it to finish
            return PurgeReport(dead_queue, deleted)
        deleted = left = 0
        with broker.reader(dead_queue) as reader:
            for fetched in _taken(reader, broker.depth(dead_queue)):
                if target.wants(letter := letter_of(dead_queue, fetched)) and select.matches(letter):
                    reader.ack(fetched.tag)
                    deleted += 1
                else:
                    keep(broker, reader, target, fetched)
                    left += 1
        return PurgeReport(dead_queue, deleted, left)


def format_age(age: dt.timedelta | None) -> str:
    if age is None:
        return "?"
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
