"""get_started/tasks.py: everything in the Celery() call."""
from time import sleep

from celery import Celery

app = Celery('tasks', broker='redis://localhost:6379/1', set_as_current=False)


@app.task(name='get_started.tasks.add')
def add(x, y):
    sleep(0)
    return x + y


_TASK_NAMES = ["get_started.tasks.add"]
