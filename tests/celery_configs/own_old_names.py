"""Old names only: CELERY_QUEUES as a dict (Celery's compat form), CELERY_ROUTES as a
tuple of a map and a pre-4.0 router class, annotations, a crontab beat entry."""
from celery.schedules import crontab


class LegacyRouter:
    def route_for_task(self, task, args=None, kwargs=None):
        if task == 'feeds.tasks.import_feed':
            return {'queue': 'feeds', 'routing_key': 'feed.import'}
        return None


BROKER_URL = 'amqp://guest:guest@localhost:5672//'
CELERY_RESULT_BACKEND = 'amqp://'
CELERY_DEFAULT_QUEUE = 'celery'
CELERY_QUEUES = {
    'celery': {'exchange': 'celery', 'routing_key': 'celery'},
    'feeds': {'exchange': 'feeds', 'exchange_type': 'topic', 'routing_key': 'feed.#'},
    'hipri': {'exchange': 'hipri', 'binding_key': 'hipri'},
}
CELERY_ROUTES = ({'tasks.urgent': {'queue': 'hipri'}, 'tasks.unknown_queue': {'queue': 'created_on_demand'}},
                 'tests.celery_configs.own_old_names.LegacyRouter')
CELERY_ANNOTATIONS = {'tasks.add': {'rate_limit': '10/s'}, '*': {'time_limit': 30}}
CELERYD_CONCURRENCY = 2
CELERYD_POOL = 'solo'
CELERY_ALWAYS_EAGER = False
CELERYBEAT_SCHEDULE = {
    'nightly': {'task': 'tasks.cleanup', 'schedule': crontab(minute=15, hour=3)},
}
CELERY_TIMEZONE = 'UTC'

_TASK_NAMES = ["tasks.urgent", "tasks.unknown_queue", "feeds.tasks.import_feed", "tasks.add", "tasks.cleanup",
               "tasks.other"]
