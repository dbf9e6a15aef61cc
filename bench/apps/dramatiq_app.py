import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from .marks import mark

url = os.environ["BENCH_BROKER_URL"]
if url.endswith("//"):  # Celery's spelling of the default vhost; pika wants %2F
    url = url[:-1] + "%2F"
broker = RabbitmqBroker(url=url, confirm_delivery=os.environ.get("BENCH_CONFIRM") == "1")
dramatiq.set_broker(broker)
queue = os.environ["BENCH_QUEUE"]


@dramatiq.actor(queue_name=queue, max_retries=0)
def noop(i=0):
    return None


@dramatiq.actor(queue_name=queue, max_retries=0)
def mark_task(name):
    mark(name)
