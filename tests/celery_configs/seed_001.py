"""Old upper-case settings: RabbitMQ, msgpack, a topic exchange with two queues, a route
and a beat schedule."""
from datetime import timedelta

from kombu import Queue

BROKER_URL = 'amqp://dongwm:123456@localhost:5672/web_develop'
CELERY_RESULT_BACKEND = 'redis://localhost:6379/0'
CELERY_TASK_SERIALIZER = 'msgpack'
CELERY_RESULT_SERIALIZER = 'json'
CELERY_TASK_RESULT_EXPIRES = 60 * 60 * 24
CELERY_ACCEPT_CONTENT = ['json', 'msgpack']
CELERY_ACKS_LATE = True
CELERY_MESSAGE_COMPRESSION = 'zlib'
CELERYD_TASK_TIME_LIMIT = 5
CELERYD_CONCURRENCY = 4
CELERYD_PREFETCH_MULTIPLIER = 4
CELERYD_MAX_TASKS_PER_CHILD = 40
CELERY_DEFAULT_QUEUE = "default"

CELERY_QUEUES = (
    Queue('default', routing_key='task.#'),
    Queue('web_tasks', routing_key='web.#'),
)
CELERY_DEFAULT_EXCHANGE = 'tasks'
CELERY_DEFAULT_EXCHANGE_TYPE = 'topic'
CELERY_DEFAULT_ROUTING_KEY = 'task.default'
CELERY_ROUTES = {
    'projq.tasks.add': {
        'queue': 'web_tasks',
        'routing_key': 'web.add',
    }
}

CELERYBEAT_SCHEDULE = {
    'add': {
        'task': 'projb.tasks.add',
        'schedule': timedelta(seconds=10),
        'args': (16, 16)
    }
}

_TASK_NAMES = ["projq.tasks.add", "projb.tasks.add", "projq.tasks.other"]
