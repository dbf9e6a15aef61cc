"""A plain Celery 5 app on the test broker, for Celery's own CLI (`celery inspect`,
`celery control`) and Flower to talk to amqtask's monitoring test node with."""
import os

from celery import Celery

app = Celery("monitor-peer", broker=os.environ["AMQTASK_BROKER_URL"])
app.conf.update(accept_content=["json"], worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
