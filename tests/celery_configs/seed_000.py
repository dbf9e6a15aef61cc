"""celeryconfig.py of a project that reads it with app.config_from_object('celeryconfig')."""
broker_url = 'pyamqp://'
result_backend = 'rpc://'

task_serializer = 'json'
result_serializer = 'json'
accept_content = ['json']
timezone = 'Europe/Oslo'
enable_utc = True

CELERYD_MAX_TASKS_PER_CHILD = 10  # an old name among new ones: Celery refuses the mix
concurrunt = 4  # a typo for the concurrency: Celery silently ignores it

task_acks_late = True
worker_prefetch_multiplier = 1

_TASK_NAMES = ["tasks.add"]
