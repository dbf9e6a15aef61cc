"""A failed scheduled run sent back from the dead letters runs again, even on the
worker that ran (and failed) it the first time; a plain copy still does not."""
from __future__ import annotations

import asyncio
import datetime as dt

from amqtask.beat.dedupe import SCHEDULE_HEADER, SCHEDULED_FOR_HEADER
from amqtask.deadletters import DeadLetter, redriven
from amqtask.protocol import TaskMessage, WireMessage, encode_task
from amqtask.serializers import Codec
from amqtask.worker.handler import Handler, HandlerConfig

from .test_handler import InlinePool, RecordingPort, delivery, make_app

SCHEDULED = {SCHEDULE_HEADER: "tick", SCHEDULED_FOR_HEADER: "2026-11-23T00:00:00Z"}


def dead_letter_of(wire: WireMessage) -> DeadLetter:
    properties = {"content_type": wire.content_type, "content_encoding": wire.content_encoding,
                  "correlation_id": wire.correlation_id}
    return DeadLetter("work.dead", wire.body, properties, {**wire.headers, "x-amqtask-reason": "ValueError"})


def requeued(wire: WireMessage) -> WireMessage:
    """The message `amqtask dead requeue` publishes for `wire` once it died."""
    out = redriven(dead_letter_of(wire), now=dt.datetime.now(dt.timezone.utc))
    return WireMessage(body=out.body, headers=dict(out.headers), content_type=wire.content_type,
                       content_encoding=wire.content_encoding, correlation_id=wire.correlation_id)


def test_a_redriven_scheduled_run_runs_again_on_the_worker_that_failed_it():
    app = make_app()
    ran: list[int] = []

    @app.task(name="t.flaky")
    def flaky(n: int) -> int:
        ran.append(n)
        if len(ran) == 1:
            raise ValueError("the first run fails")
        return n

    handler = Handler(app, HandlerConfig("w@test"), InlinePool(app), RecordingPort())
    wire = encode_task(TaskMessage(task="t.flaky", id="sched-1", args=(7,), extra_headers=SCHEDULED), Codec())

    async def scenario() -> None:
        await handler.handle(delivery(wire, []))  # fails, dead-lettered
        await handler.handle(delivery(requeued(wire), []))  # the operator's re-run
        await handler.handle(delivery(wire, []))  # a plain second copy

    asyncio.run(scenario())
    assert ran == [7, 7]
    assert handler.stats.duplicates == 1
