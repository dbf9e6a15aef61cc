"""tasks.py of the same project: a Celery app made with a broker argument."""
from celery import Celery

app = Celery('tasks', broker='amqp://guest@localhost//', set_as_current=False)


@app.task(name='tasks.add')
def add(x, y):
    return x + y


@app.task(bind=True, name='tasks.add_bound')
def add_bound(self, x, y):
    print(self.request.id)
    return x + y


_TASK_NAMES = ["tasks.add", "tasks.add_bound"]
