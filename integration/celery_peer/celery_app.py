"""A plain Celery 5 app, used to prove that messages amqtask publishes are ones a
Celery worker accepts and runs. The task records its arguments in a file."""
import json
import os

from celery import Celery
from kombu import Queue

app = Celery("peer", broker=os.environ["AMQTASK_BROKER_URL"], backend="rpc://")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    # amqtask declared the queue (with its arguments); Celery only consumes it.
    task_queues=[Queue(os.environ["PEER_QUEUE"], no_declare=True)],
)


@app.task(name="projq.tasks.add")
def add(x, y):
    with open(os.environ["PEER_RESULT_FILE"], "w") as f:
        json.dump({"args": [x, y], "result": x + y, "id": add.request.id}, f)
    return x + y
