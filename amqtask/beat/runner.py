"""The beat: stand by, lead when the token arrives, send each run exactly once.

    stop = asyncio.Event()
    await run_beat(app, stop=stop)          # `amqtask beat`, or inside a worker's loop

Any number of beats of one group may run; see amqtask/amqp/beat_lock.py for the
election. The leader's loop, each tick:
1. plan: which run instants are due (plan.py), from the state in the token;
2. commit, in one AMQP transaction: the task messages, the next token carrying the
   new state, the status copy, and the ack of the token it held;
3. sleep until the next instant (or at most KEEPALIVE, to refresh the token and the
   status), taking in any other token that arrives meanwhile (merged, acked next).
A beat whose connection fails stops leading at once (it cannot commit anything
more) and reconnects as a standby.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, TypeVar
from zoneinfo import ZoneInfo

from ..amqp.beat_lock import BeatSeat, LeadershipLost, Token
from ..errors import AmqtaskError, BrokerUnavailable, ScheduleError
from ..protocol import WireMessage
from ..publisher import CallOptions
from ..schedules import At, unread_results_reason, zone
from ..settings import ScheduleEntry, TaskOptions
from .dedupe import SCHEDULE_HEADER, SCHEDULED_FOR_HEADER
from .entries import schedule_entries
from .plan import RUN_ALL_LIMIT, Plan, Run, plan_tick
from .state import BeatState, StateError, format_instant
from .timing import next_after

log = logging.getLogger("amqtask.beat")
T = TypeVar("T")
KEEPALIVE = 30.0  # seconds between commits when nothing is due (well under consumer_timeout)
POLL = 0.25  # seconds a wait for the broker lasts before checking `stop`
MAX_BACKOFF = 10.0


def default_beat_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run_beat(app: Any, *, stop: asyncio.Event, name: str | None = None,
                   clock: Callable[[], dt.datetime] | None = None) -> None:
    """Run the app's schedules (routing.yaml's and add_periodic_task's) until `stop`
    is set: stand by, lead when elected, hand over on return. Returns at once when
    there are no schedules. Raises ScheduleError for a schedule that cannot be sent
    (before touching the broker) and DeclareConflict when the beat's queues exist
    with other arguments; broker outages are waited out."""
    entries = check_schedules(app)
    if not entries:
        log.info("no schedules; the beat has nothing to do")
        return
    beat = _Beat(app, entries, zone(app.settings.timezone), name or default_beat_name(),
                 clock or (lambda: dt.datetime.now(dt.timezone.utc)))
    await beat.run(stop)


def check_schedules(app: Any) -> tuple[ScheduleEntry, ...]:
    """Every schedule of the app, each checked by building one message for it."""
    entries = schedule_entries(app)
    tz = zone(app.settings.timezone)
    problems = []
    now = dt.datetime.now(dt.timezone.utc)
    for entry in entries:
        try:
            check_results_readable(app, entry)
            build_message(app, Run(entry, now, str(uuid.uuid4()), False), now)
        except AmqtaskError as exc:
            where = f"{app.settings.source}:{entry.line}: " if entry.line else ""
            problems.append(f"{where}schedule {entry.name!r}: {exc}")
        if isinstance(entry.schedule, At) and next_after(entry.schedule, tz, now) is None:
            log.warning("schedule %r: its time %s has passed; it will not run", entry.name,
                        format_instant(entry.schedule.when))
    if problems:
        raise ScheduleError("; ".join(problems))
    return entries


def check_results_readable(app: Any, entry: ScheduleEntry) -> None:
    """A schedule that keeps its runs' results needs a backend any process reads by task id."""
    reason = unread_results_reason(entry.options, app.settings.results.url)
    if reason is not None:
        raise ScheduleError(reason)


def build_message(app: Any, run: Run, now: dt.datetime) -> tuple[str, str, WireMessage]:
    """(exchange, routing key, message) of a run, through the app's publisher: routed
    and encoded as any apply_async call, with the run's own id, headers and eta.
    Results are ignored unless the schedule says `ignore_result: false`."""
    entry = run.entry
    options = dict(entry.options)
    ignore_result = options.pop("ignore_result", True)
    shadow = options.pop("shadow", None)  # apply_async's shadow is a header, as canvas.call_options makes it
    headers = {**options.pop("headers", {}), **({"shadow": shadow} if shadow else {}), SCHEDULE_HEADER: entry.name,
               SCHEDULED_FOR_HEADER: format_instant(run.instant)}
    delay = float(options.pop("countdown", 0.0)) + jitter_delay(entry, run.task_id)
    eta = run.instant + dt.timedelta(seconds=delay) if delay else None
    call = CallOptions(**options, headers=headers, task_id=run.task_id, eta=eta if eta and eta > now else None,
                       ignore_result=ignore_result)
    task = app.tasks.get(entry.task)
    destination, wire, _ = app.publisher.prepare(entry.task, entry.args, entry.kwargs, call=call,
                                                 task_options=task.options if task is not None else TaskOptions())
    return destination.exchange, destination.routing_key, wire


def jitter_delay(entry: ScheduleEntry, task_id: str) -> float:
    """A share of the schedule's jitter fixed by the run's id, so every beat delays
    the same run alike."""
    if not entry.jitter:
        return 0.0
    return entry.jitter * (uuid.UUID(task_id).int % 10_007) / 10_006


class _Beat:
    def __init__(self, app: Any, entries: tuple[ScheduleEntry, ...], tz: ZoneInfo, name: str,
                 clock: Callable[[], dt.datetime]) -> None:
        self.app = app
        self.entries = entries
        self.tz = tz
        self.name = name
        self.clock = clock
        self.group = app.settings.beat.group
        self.known = BeatState()  # the last state this beat committed: the first token if the queue is ever lost
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amqtask-beat")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking broker call on the beat's own thread (pika is not thread-safe)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        try:
            while not stop.is_set():
                seat = BeatSeat(self.app.settings.broker, self.group, self.name)
                try:
                    await self.call(seat.open, replace(self.known, leader="", leading_since=None).encode(),
                                    known=bool(self.known.entries))
                    backoff = 0.5
                    if seat.bootstrapped:
                        log.info("created the first token of beat group %r", self.group)
                    await self.serve(seat, stop)
                except LeadershipLost as exc:
                    log.error("%s; not leading, reconnecting", exc)
                    if self.known.entries:
                        backoff = 0.0  # a former leader comes back first: it carries the latest state
                except BrokerUnavailable as exc:
                    log.warning("%s; retrying in %gs", exc, backoff)
                finally:
                    await self.call(seat.close)
                if not stop.is_set():
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF)
        finally:
            self._executor.shutdown(wait=False)

    async def serve(self, seat: BeatSeat, stop: asyncio.Event) -> None:
        log.info("beat %s standing by in group %r (%d schedules)", self.name, self.group, len(self.entries))
        tokens: list[Token] = []
        while not tokens:
            if stop.is_set():
                return
            tokens = await self.call(seat.poll, POLL)
        since = self.clock()
        tokens += await self.settle(seat)
        state, held = self.absorb(BeatState(), tokens, None)
        previous = f"from {state.leader}, " if state.leader else ""
        state = replace(state, leader=self.name, leading_since=since)
        log.info("beat %s leading group %r (state #%d, %slast updated %s)", self.name, self.group, state.seq,
                 previous, format_instant(state.updated) if state.updated else "never")
        last_commit: dt.datetime | None = None
        while not stop.is_set():
            now = self.clock()
            plan = plan_tick(self.entries, self.tz, state, now, since)
            if plan.runs or plan.changed or last_commit is None or \
                    (now - last_commit).total_seconds() >= KEEPALIVE:
                state = await self.commit(seat, plan, now, held, since)
                held, last_commit = None, now
            deadline = self.wake_time(now, last_commit)
            while not stop.is_set():
                remaining = (deadline - self.clock()).total_seconds()
                if remaining <= 0:
                    break
                delivered = await self.call(seat.poll, min(POLL, remaining))
                state, held = self.absorb(state, delivered, held)

    async def settle(self, seat: BeatSeat) -> list[Token]:
        """Take in every token the queue holds before the first plan: after a race
        there may be more than one, and the plan must start from all they know."""
        tokens: list[Token] = []
        for _ in range(20):
            ready = await self.call(seat.ready_tokens)
            tokens += await self.call(seat.poll, 0 if ready == 0 else 0.05)
            if ready == 0:
                break
        return tokens

    def absorb(self, state: BeatState, tokens: list[Token], held: int | None) -> tuple[BeatState, int | None]:
        """Merge delivered tokens into the state; all of them are acked by the next commit
        (which also writes this beat as the leader again)."""
        for token in tokens:
            held = token.delivery_tag if held is None else max(held, token.delivery_tag)
            try:
                state = state.merged(BeatState.decode(token.body))
            except StateError as exc:
                log.error("dropping a message in the token queue that is not a beat state (%s)", exc)
        return state, held

    async def commit(self, seat: BeatSeat, plan: Plan, now: dt.datetime, held: int | None,
                     since: dt.datetime) -> BeatState:
        state = replace(plan.state, seq=plan.state.seq + 1, leader=self.name, leading_since=since, updated=now)
        messages, sent = [], []
        for run in plan.runs:
            try:
                messages.append(build_message(self.app, run, now))
                sent.append(run)
            except AmqtaskError as exc:  # checked at start; only a changed topology gets here
                log.error("schedule %r: cannot send the run for %s: %s", run.entry.name,
                          format_instant(run.instant), exc)
        returned = await self.call(seat.commit, messages, state.encode(), held)
        self.known = state
        for run in sent:
            log.info("sent %s for %s%s: %s[%s]", run.entry.name, self.local(run.instant),
                     " (missed)" if run.missed else "", run.entry.task, run.task_id)
        for name in plan.forgotten:
            log.info("dropped the state of schedule %r: it is no longer configured", name)
        for name, count, older in plan.skipped:
            policy = next(e.missed for e in self.entries if e.name == name)
            log.warning("schedule %r: %d missed run%s not sent%s (missed: %s)", name, count, "" if count == 1 else "s",
                        f", nor any older than the last {RUN_ALL_LIMIT}" if older else "", policy)
        for r in returned:
            log.error("schedule %r: the broker could not route its run for %s: exchange %r routing key %r (%s)",
                      _text(r.headers.get(SCHEDULE_HEADER)), _text(r.headers.get(SCHEDULED_FOR_HEADER)),
                      r.exchange or "(default)", r.routing_key, r.reply_text)
        return state

    def wake_time(self, now: dt.datetime, last_commit: dt.datetime | None) -> dt.datetime:
        wake = (last_commit or now) + dt.timedelta(seconds=KEEPALIVE)
        for entry in self.entries:
            upcoming = next_after(entry.schedule, self.tz, now)
            if upcoming is not None and upcoming < wake:
                wake = upcoming
        return wake

    def local(self, instant: dt.datetime) -> str:
        return instant.astimezone(self.tz).isoformat()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


__all__ = ["run_beat", "check_schedules", "build_message", "default_beat_name"]
