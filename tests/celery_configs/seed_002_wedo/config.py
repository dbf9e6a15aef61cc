"""wedo/config.py: Redis as broker and result store, old names."""
BROKER_URL = 'redis://10.8.238.2:6379/0'
CELERY_RESULT_BACKEND = 'redis://10.8.238.2:6379/0'
CELERY_RESULT_SERIALIZER = 'json'
CELERY_TASK_RESULT_EXPIRES = 60 * 60 * 24
CELERY_TIMEZONE = 'Asia/Shanghai'
CELERY_IMPORTS = (
    'wedo.tasks',
    'wedo.period_task'
)

_TASK_NAMES = ["wedo.tasks.add", "wedo.period_task.report"]
