"""What the worker does for the Celery-shaped API, as tests of
`amqtask.worker.execute.run_sync` (the function every pool runs a task with): retry
limits, the task's hooks and signals in Celery's order, Ignore."""
from __future__ import annotations


from amqtask import App, Task, signals
from amqtask.results import FAILURE, RETRY, SUCCESS
from amqtask.serializers import Codec
from amqtask.topology.loader import check_text
from amqtask.worker.execute import run_sync
from amqtask.worker.request import Request



def make_app(text: str = "{}") -> App:
    return App("contract", settings=check_text(text).settings, set_as_current=False)


def run(task, retries=0):
    return run_sync(task, Request(id="w-1", task=task.name, args=(1,), retries=retries, reply_to="r"), Codec(),
                    "json")


def test_max_retries_none_retries_without_limit():
    """execute.settle_exception: `limit = task.retry_limit(retry)`; None means no limit."""
    app = make_app()

    @app.task(name="c.forever", bind=True, max_retries=None)
    def forever(self, x):
        raise self.retry(countdown=1)

    assert run(forever, retries=10).state == RETRY


def test_routing_yaml_max_retries_applies():
    """Task.retry_limit reads routing.yaml's max_retries when the decorator has none."""
    app = make_app("tasks: {c.once: {max_retries: 1}}")

    @app.task(name="c.once", bind=True)
    def once(self, x):
        raise self.retry(countdown=1)

    assert run(once, retries=1).state == FAILURE


class Hooks(Task):
    calls: list = []

    def before_start(self, task_id, args, kwargs):
        self.calls.append("before_start")

    def on_success(self, retval, task_id, args, kwargs):
        self.calls.append(("on_success", retval, task_id, args))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self.calls.append(("on_failure", type(exc), task_id))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        self.calls.append(("on_retry", type(exc), task_id))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        self.calls.append(("after_return", status))


def test_hooks_are_called_in_celerys_order():
    app = make_app()
    Hooks.calls = []
    ok = app.task(name="c.ok", base=Hooks)(lambda x: x + 1)
    bad = app.task(name="c.bad", base=Hooks)(lambda x: 1 / 0)
    assert run(ok).state == SUCCESS and run(bad).state == FAILURE
    assert Hooks.calls == ["before_start", ("on_success", 2, "w-1", (1,)), ("after_return", SUCCESS),
                           "before_start", ("on_failure", ZeroDivisionError, "w-1"), ("after_return", FAILURE)]


def test_task_signals_are_sent_around_each_run():
    app = make_app()
    task = app.task(name="c.sig")(lambda x: x)
    heard = []
    receivers = [(getattr(signals, n), lambda _n=n, **kw: heard.append(_n))
                 for n in ("task_prerun", "task_success", "task_postrun")]
    for signal, receiver in receivers:
        signal.connect(receiver, weak=False)
    try:
        run(task)
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
    assert heard == ["task_prerun", "task_success", "task_postrun"]
