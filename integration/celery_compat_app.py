"""The App `amqtask worker -A integration.celery_compat_app` runs in test_celery_compat:
a task that waits on another (refused, as in Celery) and shared tasks found by
autodiscover_tasks when the worker loads the App."""
import os

from amqtask import App

app = App("compat", config=os.environ["COMPAT_CONFIG"])
app.autodiscover_tasks(["integration.compat_pkg"])


@app.task(name="c.child")
def child():
    return 1


@app.task(name="c.parent")
def parent():
    return child.delay().get(timeout=5)


@app.task(name="c.parent_allowed")
def parent_allowed():
    child.delay()
    return "published without waiting"
