"""wedo/tasks.py and wedo/period_task.py: a task and a periodic one, with a
crontab schedule declared from code."""
from celery.schedules import crontab

from . import app


@app.task(name='wedo.tasks.add')
def add(x, y):
    return x + y


@app.task(name='wedo.period_task.report')
def report():
    return 'ok'


app.conf.beat_schedule = {
    'morning-report': {'task': 'wedo.period_task.report', 'schedule': crontab(minute=30, hour=7, day_of_week='mon-fri')},
}

_TASK_NAMES = ["wedo.tasks.add", "wedo.period_task.report"]
