"""Tasks the monitoring tests run on `amqtask worker` (integration/monitoring.py). The
config comes from $MONITOR_TEST_CONFIG (unique names per test)."""
import os
import time

from amqtask import App
from amqtask.exceptions import Reject

app = App("monitor-tests", config=os.environ["MONITOR_TEST_CONFIG"])


@app.task(name="m.add")
def add(x, y):
    return x + y


@app.task(name="m.sleep", rate_limit="100/m")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="m.fail")
def fail():
    raise ValueError("boom")


@app.task(name="m.block")
def block(path, limit=60.0):
    """Runs until the file `path` exists (at most `limit` seconds): a task a test
    can observe while it runs, and release."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return path


@app.task(name="m.other")
def other(n):
    """Routed to the `other` queue by the tests' routing.yaml."""
    return n * n


@app.task(name="m.flaky", bind=True)
def flaky(self):
    """Asks for one retry, at once, then succeeds: a task-retried event."""
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("first try"), countdown=0)
    return self.request.retries


@app.task(name="m.reject")
def reject():
    """Refuses its message (not requeued): a task-rejected event, and a dead letter."""
    raise Reject("not for this worker", requeue=False)
