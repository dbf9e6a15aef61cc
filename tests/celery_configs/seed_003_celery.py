"""your_project/celery.py: the app reads the config module object."""
from celery import Celery

from . import seed_003_config as config

app = Celery('your project name', set_as_current=False)
app.config_from_object(config)


@app.task(name='your_project.tasks.add')
def add(x, y):
    return x + y


@app.task(name='your_project.tasks.sub')
def sub(x, y):
    return x - y


_TASK_NAMES = ["your_project.tasks.add", "your_project.tasks.sub"]
