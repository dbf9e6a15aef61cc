"""Remote control of workers, Celery-compatible (the `celery.pidbox` protocol), so
that `celery inspect`/`celery control`, Flower and `amqtask inspect`/`control`
reach amqtask workers.

- `view`: what a worker provides (the WorkerView protocol and its records);
- `commands`, `node`, `matching`, `shapes`: the worker's side, without the wire;
- `nodename`: `-n` with Celery's % expansions;
- `revoked`: the bounded set of revoked ids;
- the wire: amqtask.amqp.monitor (worker) and amqtask.amqp.control_client (client).
"""
from __future__ import annotations

from typing import Any

from ..settings import BrokerSettings


def ping_workers(broker: BrokerSettings, *, timeout: float = 1.0, destination: str | None = None) -> list[dict]:
    """Every worker that answers a ping within `timeout` seconds (none if no worker
    runs), each as {"hostname", "ok", "consuming", "queues", "active", "pid"}, on
    `celery.pidbox`. A Celery worker answers without "consuming" (it does not report it)."""
    from ..amqp.control_client import ControlClient

    targets = [destination] if destination else None
    with ControlClient(broker) as client:
        ticket = client.send("ping", {"health": True}, destination=targets, timeout=timeout)
        assert ticket is not None
        # The whole timeout, as before: under --processes N several processes answer.
        replies = client.collect(ticket, timeout)
    answers: list[dict[str, Any]] = []
    for reply in replies:
        answers.extend({"hostname": hostname, **result} for hostname, result in reply.items()
                       if isinstance(result, dict))
    return answers


__all__ = ["ping_workers"]
