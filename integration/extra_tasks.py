"""A task module a worker loads with `-I integration.extra_tasks`."""
from integration.worker_app import app


@app.task(name="t.extra")
def extra(x):
    return x * x
