"""Django settings.py read with app.config_from_object('django.conf:settings', namespace='CELERY')."""
from kombu import Queue

DEBUG = True
INSTALLED_APPS = ['shop', 'accounts']
CELERY_BROKER_URL = 'amqp://shop:pw@mq:5672/shop'
CELERY_TASK_DEFAULT_QUEUE = 'shop'
CELERY_TASK_QUEUES = [Queue('shop'), Queue('emails')]
CELERY_TASK_ROUTES = {'accounts.tasks.*': {'queue': 'emails'}}
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_MAX_TASKS_PER_CHILD = 100
CELERY_TASK_ALWAYS_EAGER = True

_TASK_NAMES = ["accounts.tasks.welcome", "shop.tasks.checkout"]
