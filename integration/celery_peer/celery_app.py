"""A plain Celery 5 app, used to prove that messages amqtask publishes are ones a
Celery worker accepts and runs. The task records its arguments in a file.

$PEER_BACKEND picks Celery's result backend (rpc:// by default; redis://... or
db+postgresql+psycopg://... for the result backend tests, with $PEER_TASK_TABLE and
$PEER_GROUP_TABLE naming the PostgreSQL tables)."""
import json
import os

from celery import Celery
from kombu import Queue

app = Celery("peer", broker=os.environ["AMQTASK_BROKER_URL"], backend=os.environ.get("PEER_BACKEND", "rpc://"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_extended=os.environ.get("PEER_EXTENDED") == "1",
    # No remote control: its fanout exchange (celery.pidbox) would outlive the test.
    worker_enable_remote_control=False,
    # amqtask declared the queue (with its arguments); Celery only consumes it.
    task_queues=[Queue(os.environ["PEER_QUEUE"], no_declare=True)],
)
if os.environ.get("PEER_TASK_TABLE"):
    app.conf.database_table_names = {"task": os.environ["PEER_TASK_TABLE"], "group": os.environ["PEER_GROUP_TABLE"]}


@app.task(name="projq.tasks.add")
def add(x, y):
    if os.environ.get("PEER_RESULT_FILE"):
        with open(os.environ["PEER_RESULT_FILE"], "w") as f:
            json.dump({"args": [x, y], "result": x + y, "id": add.request.id}, f)
    return x + y


@app.task(name="peer.add")
def peer_add(x, y=0):
    return x + y


@app.task(name="peer.sum")
def peer_sum(values):
    return sum(values)


@app.task(name="peer.fail")
def peer_fail():
    raise ValueError("peer failed")
