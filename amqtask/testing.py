"""An in-memory broker for testing YOUR tasks without RabbitMQ. For tests only.

    from amqtask.testing import TestBroker

    def test_add_goes_to_web_tasks():
        with TestBroker(app) as broker:
            result = add.delay(2, 3)
            assert broker.queue_names_of(result) == ["web_tasks"]
            broker.run_all()
            assert result.get() == 5

Messages are routed with the same topology model as RabbitMQ would route them
(routing.yaml's exchanges, bindings, routes), encoded in the real wire format,
and run in this process by `run_all()`. Delays are not waited for: a countdown
or retry runs on the next pass. It proves routing and task logic, not delivery
guarantees; those need the real broker.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from .errors import UnroutableError
from .protocol import TaskMessage, WireMessage, decode_task, encode_task
from .publisher import Publisher
from .results import READY_STATES, TimeoutError, result_body
from .serializers import Codec
from .worker.execute import FAILURE, RETRY, run_sync
from .worker.request import Request

if TYPE_CHECKING:
    from .app import App
    from .results import AsyncResult


class _MemoryResults:
    """Stands in for ResultConsumer: results land in a dict."""

    queue = "amqtask.testing.reply"

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.sent: set[str] = set()

    def expect(self, task_id: str) -> str:
        self.sent.add(task_id)
        return self.queue

    def ensure_queue(self) -> None:
        pass

    def knows(self, task_id: str) -> bool:
        return task_id in self.sent

    def latest(self, task_id: str) -> dict[str, Any] | None:
        return self.results.get(task_id)

    def poll(self, seconds: float = 0.0) -> None:
        pass

    def wait(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        payload = self.results.get(task_id)
        if payload is None or payload.get("status") not in READY_STATES:
            raise TimeoutError(f"task {task_id} has not run: call broker.run_all() first")
        return payload

    def close(self) -> None:
        pass


class _MemoryTransport:
    def __init__(self, broker: "TestBroker") -> None:
        self.broker = broker

    def publish(self, exchange: str, routing_key: str, wire: WireMessage, *, mandatory: bool = True) -> None:
        queues = self.broker.app.settings.topology.route(exchange, routing_key, wire.headers)
        if not queues and mandatory:
            raise UnroutableError(exchange, routing_key)
        for queue in queues:
            self.broker.queues[queue].append(wire)

    def close(self) -> None:
        pass


class TestBroker:
    __test__ = False  # not a pytest test class

    def __init__(self, app: "App") -> None:
        self.app = app
        self.queues: dict[str, list[WireMessage]] = defaultdict(list)
        self.codec = Codec(app.settings.broker.accept_content)
        self._results = _MemoryResults()
        self._saved: Publisher | None = None

    def __enter__(self) -> "TestBroker":
        self._saved = self.app._publisher
        self.app._publisher = Publisher(self.app.settings, self.app.router,
                                        transport=_MemoryTransport(self),  # type: ignore[arg-type]
                                        results=self._results)  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: object) -> None:
        self.app._publisher = self._saved

    def messages(self, queue: str) -> list[TaskMessage]:
        """The task messages waiting in `queue`, decoded."""
        return [decode_task(w, self.codec) for w in self.queues.get(queue, [])]

    def queue_names_of(self, result: "AsyncResult") -> list[str]:
        return sorted(q for q, wires in self.queues.items() if any(w.correlation_id == result.id for w in wires))

    def run_all(self, max_passes: int = 100) -> int:
        """Run every queued task (and the retries they schedule); returns how many runs."""
        runs = 0
        for _ in range(max_passes):
            pending = [(q, w) for q, wires in self.queues.items() for w in wires]
            if not pending:
                return runs
            self.queues.clear()
            for queue, wire in pending:
                self._run(queue, wire)
                runs += 1
        raise RuntimeError(f"tasks still queued after {max_passes} passes (a retry loop?)")

    def _run(self, queue: str, wire: WireMessage) -> None:
        message = decode_task(wire, self.codec)
        task = self.app.tasks[message.task]
        request = Request(id=message.id, task=message.task, args=message.args, kwargs=dict(message.kwargs),
                          retries=message.retries, eta=message.eta, reply_to=message.reply_to, queue=queue,
                          headers={"ignore_result": message.ignore_result})
        outcome = run_sync(task, request, self.codec, "json")
        if outcome.state == RETRY:
            retry = TaskMessage(**{**message.__dict__, "retries": message.retries + 1, "eta": None})
            self.queues[queue].append(encode_task(retry, self.codec))
        if outcome.reply is not None:
            self._results.results[message.id] = json.loads(outcome.reply)
        elif outcome.state == FAILURE:
            self._results.results[message.id] = result_body(message.id, FAILURE, outcome.exc_payload)
