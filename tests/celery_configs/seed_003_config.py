"""your_project/config.py: old names, some misspelt in the namespaced form Celery
does not read without namespace='CELERY'."""
LBT_CONFIG_OTHER = {'BROKER_URL': 'redis://127.0.0.1:6379/3'}

CELERY_ACCEPT_CONTENT = ['json']
CELERY_TIMEZONE = 'Asia/Shanghai'
CELERY_INCLUDE = ['celerys.task']
CELERYBEAT_SCHEDULER = 'celery.beat:PersistentScheduler'
CELERYBEAT_SCHEDULE_FILENAME = 'log/celery.db'
BROKER_URL = LBT_CONFIG_OTHER['BROKER_URL']
BROKER_TRANSPORT_OPTIONS = {'fanout_prefix': True}
CELERY_RESULT_BACKEND = BROKER_URL
CELERY_RESULT_SERIALIZER = 'json'
CELERY_RESULT_PERSISTENT = False
CELERY_TASK_RESULT_EXPIRES = 60 * 60
CELERY_TASK_SERIALIZER = 'json'
CELERY_TASK_TIME_LIMIT = 60 * 60
CELERY_TASK_IGNORE_RESULT = True
CELERYD_CONCURRENCY = 6
CELERYD_MAX_TASKS_PER_CHILD = 1024
CELERY_REDIS_MAX_CONNECTIONS = 1024

_TASK_NAMES = ["your_project.tasks.add", "your_project.tasks.sub"]
