"""The quick-start demo: declare routing.yaml, publish routed tasks, and show the
queue each one landed in (read back from RabbitMQ, not predicted)."""
from __future__ import annotations

import sys
from pathlib import Path

from amqtask import App, AmqtaskError, UnroutableError
from amqtask.amqp.blocking import BlockingTransport

ROOT = Path(__file__).resolve().parent.parent
CALLS = [
    ("projq.tasks.add", (2, 3)),
    ("projq.web.render", ("home",)),
    ("projq.notify.email", ("ops@example.com",)),
    ("projq.billing.invoice", (42,)),
    ("projq.reports.pdf", ("q3",)),
    ("projq.maintenance.vacuum", ()),
    ("projq.unrouted.thing", ()),
]


def where_they_landed(app: App, task_ids: set[str]) -> dict[str, list[str]]:
    """Take our messages back out of every non-stream queue; leave others' alone."""
    landed: dict[str, list[str]] = {}
    transport = app.publisher.transport
    channel = transport._open()  # the demo inspects with the publisher's own channel
    for queue in app.settings.topology.queues.values():
        if queue.queue_type == "stream":
            continue
        requeue = []
        while True:
            method, props, _ = channel.basic_get(queue.name)
            if method is None:
                break
            if props.correlation_id in task_ids:
                landed.setdefault(props.correlation_id, []).append(queue.name)
                channel.basic_ack(method.delivery_tag)
            else:
                requeue.append(method.delivery_tag)
        for tag in requeue:
            channel.basic_nack(tag, requeue=True)
    return landed


def main() -> int:
    app = App("demo", config=ROOT / "routing.yaml")
    broker = app.settings.broker.urls[0].redacted()
    print(f"broker: {broker}")
    with BlockingTransport(app.settings.broker) as transport:
        conflicts = transport.declare(app.settings.topology)
    for conflict in conflicts:
        print(f"conflict: {conflict}", file=sys.stderr)
    t = app.settings.topology
    print(f"declared {len(t.exchanges)} exchanges, {len(t.queues)} queues, {len(t.bindings)} bindings\n")

    sent = {}
    for name, args in CALLS:
        result = app.send_task(name, args)
        sent[result.id] = result
    try:
        app.send_task("projq.tasks.add", (1, 1), routing_key="zz.nowhere")
    except UnroutableError as exc:
        refused = str(exc)
    landed = where_they_landed(app, set(sent))
    app.close()

    print(f"{'TASK':28} {'EXCHANGE':10} {'ROUTING KEY':14} LANDED IN")
    for task_id, result in sent.items():
        d = result.destination
        queues = ", ".join(landed.get(task_id, [])) or "(nowhere!)"
        print(f"{result.task_name:28} {d.exchange or '(default)':10} {d.routing_key:14} {queues}")
    print(f"\nrefused at publish time: {refused}")
    missing = [sent[i].task_name for i in sent if i not in landed]
    if missing:
        print(f"not found in any queue: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AmqtaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
