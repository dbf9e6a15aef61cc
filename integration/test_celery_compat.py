"""Coming from Celery, against the real broker: Celery itself and amqtask put every task
of an imported configuration in the same queues; the publish signals surround real
confirmed publishes; a worker refuses get() inside a task and runs shared tasks found
by autodiscover_tasks."""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import subprocess
import sys
import time

import pytest
from celery import Celery

from amqtask import App, signals
from amqtask.amqp.blocking import BlockingTransport
from amqtask.celery_import import import_celery
from amqtask.control import ping_workers

from .conftest import ROOT, drain, topology_yaml, track_topology, worker_yaml

CELERY_CONFIG = '''
from kombu import Exchange, Queue

P = "{prefix}"
tasks_x = Exchange(f"{{P}}.tasks", type="topic")
media = Exchange(f"{{P}}.media", type="direct")
fan = Exchange(f"{{P}}.fan", type="fanout")
task_default_queue = f"{{P}}.default"
task_default_exchange = f"{{P}}.tasks"
task_default_exchange_type = "topic"
task_default_routing_key = "task.default"
task_queues = (
    Queue(f"{{P}}.default", tasks_x, routing_key="task.#"),
    Queue(f"{{P}}.web", tasks_x, routing_key="web.#"),
    Queue(f"{{P}}.video", media, routing_key="video", queue_arguments={{"x-max-priority": 5}}),
    Queue(f"{{P}}.audit", fan),
    Queue(f"{{P}}.all", tasks_x, routing_key="#"),
)


def router(name, args, kwargs, options, task=None, **kw):
    if name == "p.routed":
        return {{"queue": f"{{P}}.video"}}
    return None


task_routes = (
    {{"p.web": {{"queue": f"{{P}}.web", "routing_key": "web.page"}},
      "p.web_pattern_key": {{"queue": f"{{P}}.web"}},
      "p.video": {{"queue": f"{{P}}.video"}},
      "p.fan": {{"queue": f"{{P}}.audit"}},
      "p.missing": {{"queue": f"{{P}}.ondemand"}},
      "p.explicit": {{"exchange": f"{{P}}.tasks", "routing_key": "web.x"}}}},
    router,
)
'''
NAMES = ["p.web", "p.web_pattern_key", "p.video", "p.fan", "p.missing", "p.explicit", "p.routed", "p.other"]


def landing(channel, queues, publish) -> set[str]:
    """The queues that received the message `publish()` sends (each drained after)."""
    publish()  # confirmed on both sides: by then RabbitMQ has put it in its queues
    return {q for q in queues if drain(channel, q)}


def test_celery_and_amqtask_put_every_task_in_the_same_queues(prefix, tmp_path, amqp, broker_url):
    source = tmp_path / f"{prefix}_celeryconfig.py"
    source.write_text(CELERY_CONFIG.format(prefix=prefix))
    translation = import_celery(source, task_names=NAMES)
    settings = translation.settings
    for name in settings.topology.queues:
        amqp.track("queue", name)
    for name in [*settings.topology.exchanges, f"{prefix}.ondemand"]:
        amqp.track("exchange", name)
    assert not translation.report.problems, translation.report.format()
    with BlockingTransport(settings.broker) as transport:
        assert transport.declare(settings.topology) == []

    spec = importlib.util.spec_from_file_location(source.stem, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    celery = Celery("celery-side", broker=broker_url, set_as_current=False)
    celery.config_from_object(module)
    celery.conf.broker_transport_options = {"confirm_publish": True}
    app = App("amqtask-side", settings=settings, set_as_current=False)
    queues = sorted(settings.topology.queues)
    try:
        for name in NAMES:
            # Celery declares the queue it publishes to: a declaration that differed from
            # amqtask's would fail here with PRECONDITION_FAILED.
            theirs = landing(amqp, queues, lambda: celery.send_task(name, ignore_result=True))
            ours = landing(amqp, queues, lambda: app.send_task(name))
            assert theirs and ours == theirs, (name, theirs, ours)
    finally:
        celery.close()
        app.close()


def test_publish_signals_surround_confirmed_publishes_and_add_headers(prefix, tmp_path, amqp, broker_url):
    track_topology(amqp, prefix)
    config = tmp_path / "routing.yaml"
    config.write_text(topology_yaml(prefix))
    app = App("signals", config=config, set_as_current=False)
    add = app.task(name="projq.tasks.add")(lambda x, y: x + y)
    seen = []

    def before(sender=None, headers=None, routing_key=None, **kwargs):
        headers["x-trace-id"] = f"trace-{routing_key}"
        seen.append(("before", sender))

    def after(sender=None, exchange=None, **kwargs):
        seen.append(("after", sender, exchange))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    try:
        with BlockingTransport(app.settings.broker) as transport:
            transport.declare(app.settings.topology)
        add.apply_async((1, 2), ignore_result=True)

        async def publish_async():
            await add.apply_async_async((3, 4), ignore_result=True)
            await app.aclose()

        asyncio.run(publish_async())
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
        app.close()
    messages = drain(amqp, f"{prefix}.web_tasks")
    assert [props.headers["x-trace-id"] for _, props, _ in messages] == ["trace-web.add", "trace-web.add"]
    assert seen == [("before", "projq.tasks.add"), ("after", "projq.tasks.add", f"{prefix}.tasks")] * 2


@pytest.fixture
def compat_worker(prefix, tmp_path, amqp, broker_url):
    config = tmp_path / "routing.yaml"
    config.write_text(worker_yaml(prefix))
    for name in ("work", "other", "work.dead", "other.dead"):
        amqp.track("queue", f"{prefix}.{name}")
    amqp.track("exchange", f"{prefix}.x")
    os.environ["COMPAT_CONFIG"] = str(config)
    sys.modules.pop("integration.celery_compat_app", None)
    module = importlib.import_module("integration.celery_compat_app")
    log = open(tmp_path / "worker.log", "w")
    name = f"{prefix}-compat@localhost"
    process = subprocess.Popen(
        [sys.executable, "-m", "amqtask.cli", "worker", "-A", "integration.celery_compat_app", "-Q",
         f"{prefix}.work", "-P", "threads", "-c", "2", "--processes", "1", "-n", name],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not any(r.get("consuming") for r in ping_workers(module.app.settings.broker, timeout=0.3,
                                                            destination=name)):
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
    yield module, (tmp_path / "worker.log")
    process.terminate()
    process.wait(timeout=30)
    module.app.close()


def test_worker_refuses_get_inside_a_task_and_runs_autodiscovered_shared_tasks(compat_worker):
    module, log = compat_worker
    with pytest.raises(Exception) as caught:
        module.parent.delay().get(timeout=30)
    assert type(caught.value).__name__ == "BlockingGetError", caught.value
    assert "never call result.get() within a task" in str(caught.value)
    assert module.parent_allowed.delay().get(timeout=30) == "published without waiting"
    assert "c.shared" in log.read_text()  # the banner lists the autodiscovered shared task
    # This process never imported the package: the worker found the task on its own.
    assert "c.shared" not in module.app.tasks
    assert module.app.send_task("c.shared", ("hi",)).get(timeout=30) == {"value": "hi", "app": "compat"}


def test_await_result_from_a_real_worker_leaves_the_event_loop_free(harness, tmp_path):
    """`await result` (rpc://): the value, the task's own exception, and while one await
    waits for a task held at a gate, another completes on the same loop."""
    harness.start("-P", "threads", "-c", "2")
    gate = tmp_path / "gate"
    tasks = harness.module

    async def use() -> tuple:
        held = tasks.gated.delay("held", str(gate))
        waiting = asyncio.ensure_future(held)  # await result, as a task of its own
        quick = await tasks.add.delay(20, 22)  # done while `held` is still awaited
        still_waiting = not waiting.done()
        gate.touch()
        with pytest.raises(ValueError, match="boom"):
            await tasks.fail.delay()
        return quick, still_waiting, await waiting

    assert asyncio.run(use()) == (42, True, "held")
