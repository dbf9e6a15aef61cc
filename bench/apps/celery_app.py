import os

from celery import Celery
from kombu import Queue

from .marks import mark

app = Celery("bench", broker=os.environ["BENCH_BROKER_URL"], backend="rpc://")
queue = os.environ["BENCH_QUEUE"]
app.conf.update(
    task_queues=[Queue(queue)], task_default_queue=queue, worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True, task_acks_late=os.environ.get("BENCH_ACKS_LATE") == "1",
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH_MULTIPLIER", "4")),
    broker_transport_options={"confirm_publish": os.environ.get("BENCH_CONFIRM") == "1"},
)


# No results for the drained tasks, as in the amqtask and Dramatiq apps: with the rpc
# backend a result would be one more message published per task.
@app.task(name="bench.noop", ignore_result=True)
def noop(i=0):
    return None


@app.task(name="bench.add")
def add(x, y):
    return x + y


@app.task(name="bench.mark", ignore_result=True)
def mark_task(name):
    mark(name)
