"""Example tasks used by the README and the quick-start demo.

Run a worker on them:  amqtask worker -A examples.tasks -Q web_tasks
"""
import asyncio
import time
from pathlib import Path

from amqtask import App

app = App("projq", config=Path(__file__).resolve().parent.parent / "routing.yaml")


@app.task(name="projq.tasks.add")
def add(x, y):
    return x + y


@app.task(name="projq.web.render")
def render(page):
    return f"<h1>{page}</h1>"


@app.task(name="projq.notify.email")
def email(address):
    return f"queued mail to {address}"


@app.task(name="projq.billing.invoice", bind=True, max_retries=3)
def invoice(self, number):
    if self.request.retries == 0:
        # the first attempt fails on purpose, to show a broker-delayed retry
        raise self.retry(countdown=1)
    return {"invoice": number, "attempt": self.request.retries + 1}


@app.task(name="projq.reports.pdf")
async def pdf(quarter):
    await asyncio.sleep(0.05)
    return f"report-{quarter}.pdf"


@app.task(name="projq.maintenance.vacuum")
def vacuum():
    time.sleep(0.1)
    return "vacuumed"


@app.task(name="projq.tasks.fail")
def fail():
    raise ValueError("this task always fails")
