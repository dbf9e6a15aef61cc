"""Tasks for the worker tests. The config comes from $WORKER_TEST_CONFIG (unique
queue names per test); executions are appended to $WORKER_TEST_RECORD as JSON lines,
so tests can count runs across processes and kills."""
import asyncio
import json
import os
import time

from amqtask import App
from amqtask.worker.request import SoftTimeLimitExceeded

app = App("worker-tests", config=os.environ["WORKER_TEST_CONFIG"])


def record(**fields):
    line = json.dumps({**fields, "pid": os.getpid(), "ppid": os.getppid(), "t": time.time()}) + "\n"
    with open(os.environ["WORKER_TEST_RECORD"], "a") as f:
        f.write(line)


@app.task(name="t.add")
def add(x, y):
    return x + y


@app.task(name="t.record", bind=True)
def record_task(self, tag, sleep=0.0):
    eta = self.request.eta.timestamp() if self.request.eta else None
    record(event="start", tag=tag, id=self.request.id, redelivered=self.request.redelivered, eta=eta)
    if sleep:
        time.sleep(sleep)
    record(event="end", tag=tag, id=self.request.id)
    return tag


@app.task(name="t.gated", bind=True)
def gated(self, tag, gate):
    """Runs until the file `gate` exists (at most a minute): holds a slot as long as a test needs."""
    record(event="start", tag=tag, id=self.request.id, redelivered=self.request.redelivered)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    record(event="end", tag=tag, id=self.request.id)
    return tag


@app.task(name="t.pid")
def pid():
    return os.getpid()


@app.task(name="t.fail")
def fail():
    raise ValueError("boom")


@app.task(name="t.async")
async def async_task(x):
    await asyncio.sleep(0.05)
    return x * 2


@app.task(name="t.retry", bind=True, max_retries=2)
def retry_task(self, succeed_on):
    record(event="attempt", id=self.request.id, retries=self.request.retries)
    if self.request.retries < succeed_on:
        raise self.retry(countdown=0.5, exc=KeyError("not yet"))
    return self.request.retries


@app.task(name="t.autoretry", bind=True, autoretry_for=(ConnectionError,), retry_backoff=0.2, max_retries=3)
def autoretry(self):
    record(event="attempt", id=self.request.id, retries=self.request.retries)
    if self.request.retries < 2:
        raise ConnectionError("flaky")
    return "ok"


@app.task(name="t.soft", soft_time_limit=0.5)
def soft():
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(name="t.hard", time_limit=0.5)
def hard():
    time.sleep(30)


@app.task(name="t.die", bind=True)
def die(self, always=True):
    record(event="start", id=self.request.id, redelivered=self.request.redelivered)
    if always or not self.request.redelivered:
        os._exit(3)
    return "survived"


@app.task(name="t.die_requeue", bind=True, reject_on_worker_lost=True)
def die_requeue(self):
    record(event="start", id=self.request.id, redelivered=self.request.redelivered)
    if not self.request.redelivered:
        os._exit(3)
    return "second life"


@app.task(name="t.rated", rate_limit="5/s")
def rated(n):
    record(event="rated", n=n)
    return n


@app.task(name="t.unrated")
def unrated(n):
    record(event="unrated", n=n)
    return n


@app.task(name="t.early", acks_late=False, bind=True)
def early(self, sleep):
    record(event="start", id=self.request.id)
    time.sleep(sleep)
    return "done"


@app.task(name="projq.tasks.add")
def projq_add(x, y):
    """The task the protocol vectors and docs/protocol.md call."""
    return x + y


@app.task(name="t.mark", bind=True)
def mark(self, seq, sleep=0.0):
    """One line per execution: what the chaos scenarios count."""
    if sleep:
        time.sleep(sleep)
    record(event="ran", seq=seq, id=self.request.id, redelivered=self.request.redelivered)


@app.task(name="t.slow")
def slow(seq):
    time.sleep(0.02)


@app.task(name="t.tsum", bind=True)
def tsum(self, values):
    """A chord body: records each time it runs."""
    record(event="body", id=self.request.id, n=len(values))
    return sum(values)


@app.task(name="t.fail_on", bind=True)
def fail_on(self, x, bad=13, sleep=0.0):
    record(event="part", id=self.request.id, x=x, redelivered=self.request.redelivered)
    if sleep:
        time.sleep(sleep)
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


@app.task(name="t.errback")
def errback(task_id):
    record(event="errback", failed=task_id)
