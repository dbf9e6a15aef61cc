import os

from amqtask import App

from .marks import mark

app = App("bench", config=os.environ["BENCH_CONFIG"])


@app.task(name="bench.noop")
def noop(i=0):
    return None


@app.task(name="bench.anoop")
async def anoop(i=0):
    return None


@app.task(name="bench.add")
def add(x, y):
    return x + y


@app.task(name="bench.mark")
def mark_task(name):
    mark(name)
