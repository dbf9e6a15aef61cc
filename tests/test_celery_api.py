"""The Celery-shaped surface without a broker: eager runs with hooks and signals in
Celery's order, max_retries=None, self.request outside a worker, get() refused inside
a task, exceptions under Celery's names, shared_task, app.conf, config_from_object,
autodiscover_tasks, and App as a context manager."""
from __future__ import annotations

import asyncio
import sys
import textwrap
import warnings

import pytest

import amqtask
from amqtask import App, Task, exceptions, shared_task, signals
from amqtask.app import CeleryConfigWarning, load_app
from amqtask.celery_import import CeleryConfigError
from amqtask.conf import OLD_NAMES, ReadOnlyConf
from amqtask.context import LocalRequest
from amqtask.eager import EagerResult
from amqtask.errors import BlockingGetError, Ignore
from amqtask.results import FAILURE, SUCCESS, assert_will_not_block
from amqtask.serializers import Codec
from amqtask.testing import TestBroker
from amqtask.topology.loader import check_text
from amqtask.worker.execute import run_sync
from amqtask.worker.request import Reject, Request, current_request

CONFIG = """
broker: {url: "amqp://u:p%40ss@mq.example:5673/prod", heartbeat: 20}
defaults: {exchange: tasks, routing_key: work, queue: work, serializer: msgpack}
exchanges: {tasks: {type: topic}}
queues: {work: {bindings: [{exchange: tasks, routing_key: "#"}]}}
worker: {concurrency: 3, prefetch_multiplier: 2, pool: threads}
results: {expires: 1h}
"""


@pytest.fixture(autouse=True)
def forget_shared_tasks():
    """Shared tasks belong to every App in the process, by design; a test's own must not
    reach other tests' Apps."""
    saved = dict(amqtask.shared._SHARED.definitions)
    yield
    amqtask.shared._SHARED.definitions.clear()
    amqtask.shared._SHARED.definitions.update(saved)


def make_app(text: str = "{}", **options) -> App:
    return App("t", settings=check_text(text).settings, set_as_current=False, **options)


class Recorder(Task):
    """Records every hook with its arguments."""

    calls: list = []

    def before_start(self, task_id, args, kwargs):
        self.calls.append(("before_start", task_id, args, kwargs))

    def on_success(self, retval, task_id, args, kwargs):
        self.calls.append(("on_success", retval, task_id, args, kwargs))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        self.calls.append(("on_retry", exc, task_id, args, kwargs, einfo.type))

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self.calls.append(("on_failure", exc, task_id, args, kwargs, einfo.type, "Traceback" in einfo.traceback))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        self.calls.append(("after_return", status, retval, task_id, args, kwargs, einfo))


@pytest.fixture
def recorded():
    Recorder.calls = []
    seen = Recorder.calls
    receivers = []
    for name in ("task_prerun", "task_postrun", "task_success", "task_failure", "task_retry"):
        def receiver(signal=None, sender=None, _name=name, **kwargs):
            seen.append((_name, sender.name, kwargs.get("state") or kwargs.get("result")))
        getattr(signals, name).connect(receiver, weak=False)
        receivers.append((name, receiver))
    yield seen
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


# -- eager runs: hooks and signals in Celery's order ------------------------------------

def test_success_hooks_and_signals_in_celerys_order(recorded):
    app = make_app()

    @app.task(name="t.add", base=Recorder)
    def add(x, y):
        return x + y

    result = add.apply((2, 3), task_id="id-1")
    assert isinstance(result, EagerResult) and result.get() == 5 and result.state == SUCCESS
    assert recorded == [
        ("task_prerun", "t.add", None), ("before_start", "id-1", (2, 3), {}),
        ("on_success", 5, "id-1", (2, 3), {}), ("task_success", "t.add", 5),
        ("after_return", SUCCESS, 5, "id-1", (2, 3), {}, None), ("task_postrun", "t.add", SUCCESS),
    ]


def test_failure_hooks_get_the_exception_and_einfo(recorded):
    app = make_app()

    @app.task(name="t.fail", base=Recorder)
    def fail():
        raise KeyError("k")

    result = fail.apply(task_id="id-2")
    assert result.failed() and isinstance(result.result, KeyError) and "KeyError" in result.traceback
    with pytest.raises(KeyError):
        result.get()
    assert result.get(propagate=False) is result.result
    error = result.result
    assert recorded == [
        ("task_prerun", "t.fail", None), ("before_start", "id-2", (), {}),
        ("on_failure", error, "id-2", (), {}, KeyError, True), ("task_failure", "t.fail", None),
        ("after_return", FAILURE, error, "id-2", (), {}, None), ("task_postrun", "t.fail", FAILURE),
    ]


def test_retries_run_again_at_once_with_on_retry_each_time(recorded):
    app = make_app()

    @app.task(name="t.flaky", bind=True, base=Recorder, max_retries=5)
    def flaky(self):
        if self.request.retries < 2:
            raise self.retry(exc=OSError("again"), countdown=60)
        return self.request.retries

    assert flaky.apply().get() == 2
    kinds = [c[0] for c in recorded]
    assert kinds.count("on_retry") == 2 and kinds.count("task_retry") == 2
    assert kinds.count("after_return") == 1  # never after a retry, as in Celery
    assert [c[1] for c in recorded if c[0] == "task_postrun"] == ["t.flaky"] * 3
    assert isinstance([c for c in recorded if c[0] == "on_retry"][0][1], OSError)


def test_max_retries_none_means_unlimited():
    app = make_app()

    @app.task(name="t.stubborn", bind=True, max_retries=None)
    def stubborn(self):
        if self.request.retries < 12:  # well past Celery's default of 3
            raise self.retry()
        return "done"

    assert stubborn.max_retries is None
    assert stubborn.apply().get() == "done"


def test_retries_used_up_fail_with_the_cause_or_max_retries_exceeded():
    app = make_app()

    @app.task(name="t.cause", bind=True, max_retries=1)
    def cause(self):
        raise self.retry(exc=ValueError("cause"))

    @app.task(name="t.bare", bind=True)
    def bare(self):
        raise self.retry()

    assert isinstance(cause.apply().result, ValueError)
    assert cause.max_retries == 1 and bare.max_retries == 3
    assert isinstance(bare.apply().result, exceptions.MaxRetriesExceededError)


def test_routing_yaml_max_retries_counts_when_the_decorator_says_nothing():
    app = make_app("tasks: {t.conf: {max_retries: 7}}")
    assert app.task(name="t.conf")(lambda: None).max_retries == 7


def test_autoretry_for_and_base_class_attributes():
    app = make_app()

    class Patient(Task):
        autoretry_for = (ConnectionError,)
        max_retries = 4

    attempts = []

    @app.task(name="t.patient", base=Patient)
    def patient():
        attempts.append(1)
        raise ConnectionError("down")

    result = patient.apply()
    assert len(attempts) == 5 and isinstance(result.result, ConnectionError)

    class Forever(Task):
        max_retries = None

    assert app.task(name="t.forever", base=Forever)(lambda: None).max_retries is None
    with pytest.raises(TypeError, match="subclass of amqtask.Task"):
        app.task(name="t.bad", base=dict)(lambda: None)


def test_ignore_and_reject_skip_after_return(recorded):
    app = make_app()

    @app.task(name="t.ignore", base=Recorder)
    def ignore():
        raise Ignore()

    @app.task(name="t.reject", base=Recorder)
    def reject():
        raise Reject("no", requeue=False)

    assert ignore.apply().state == "IGNORED" and reject.apply().state == "REJECTED"
    kinds = [c[0] for c in recorded]
    assert "after_return" not in kinds and "on_failure" not in kinds and kinds.count("task_postrun") == 2


def test_eager_propagates_raises_from_apply_and_skips_on_failure(recorded):
    app = make_app()

    @app.task(name="t.raise", base=Recorder)
    def boom():
        raise ZeroDivisionError()

    with pytest.raises(ZeroDivisionError):
        boom.apply(throw=True)
    assert [c[0] for c in recorded] == ["task_prerun", "before_start", "task_postrun"]


def test_on_success_errors_reach_the_eager_caller_but_on_failure_errors_are_logged(caplog):
    app = make_app()

    class Broken(Task):
        def on_success(self, *args):
            raise RuntimeError("hook bug")

        def on_failure(self, *args):
            raise RuntimeError("failure hook bug")

    good = app.task(name="t.good", base=Broken)(lambda: 1)
    bad = app.task(name="t.bad", base=Broken)(lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="hook bug"):
        good.apply()
    assert bad.apply().failed() and "failure hook bug" in caplog.text


def test_async_tasks_run_eagerly_from_sync_and_async_code():
    app = make_app(task_always_eager=True)

    @app.task(name="t.async", bind=True)
    async def double(self, x):
        await asyncio.sleep(0)
        return (x * 2, self.request.is_eager)

    assert double.delay(4).get() == (8, True)

    async def from_async():
        return (await double.delay_async(5)).get(), double.delay(6).get()

    assert asyncio.run(from_async()) == ((10, True), (12, True))


# -- await result ------------------------------------------------------------------------------

def test_await_result_gives_the_value_or_raises_the_tasks_exception():
    app = make_app("queues: {q: {}}\ndefaults: {queue: q}")
    add = app.task(name="t.add")(lambda x, y: x + y)
    fail = app.task(name="t.fail")(lambda: {}["missing"])

    async def use(broker):
        sum_, failed = add.delay(2, 3), fail.delay()
        broker.run_all()
        value = await sum_
        with pytest.raises(KeyError) as caught:
            await failed
        returned = await failed.get_async(propagate=False)
        return value, caught.value, returned

    with TestBroker(app) as broker:
        value, raised, returned = asyncio.run(use(broker))
    assert value == 5 and type(raised) is KeyError and type(returned) is KeyError


def test_await_an_eager_result_as_a_published_one():
    app = make_app(task_always_eager=True)
    add = app.task(name="t.add")(lambda x, y: x + y)
    fail = app.task(name="t.fail")(lambda: {}["missing"])

    async def use():
        with pytest.raises(KeyError):
            await fail.delay()
        return await add.delay(1, 2), await add.apply_async((3, 4)), await fail.delay().get_async(propagate=False)

    value, other, error = asyncio.run(use())
    assert (value, other, type(error)) == (3, 7, KeyError)


# -- task_always_eager ---------------------------------------------------------------------

def test_always_eager_runs_apply_async_here_and_send_task_still_publishes():
    app = make_app("queues: {q: {}}\ndefaults: {queue: q}", task_always_eager=True)
    add = app.task(name="t.add")(lambda x, y: x + y)
    result = add.apply_async((1, 2), task_id="fixed", countdown=30)
    assert isinstance(result, EagerResult) and result.id == "fixed" and result.get() == 3
    with pytest.raises(TypeError, match="unknown apply_async option"):
        add.apply_async((1, 2), contdown=3)
    with TestBroker(app) as broker, pytest.warns(RuntimeWarning, match="no effect on send_task"):
        app.send_task("t.add", (1, 2))
        assert len(broker.queues["q"]) == 1


def test_eager_propagates_from_the_app_option():
    app = make_app(task_always_eager=True, task_eager_propagates=True)
    fail = app.task(name="t.fail")(lambda: {}["missing"])
    with pytest.raises(KeyError):
        fail.delay()


# -- self.request and retry outside a worker ------------------------------------------------

def test_request_outside_a_worker_is_celerys_context():
    app = make_app()

    @app.task(name="t.who", bind=True)
    def who(self, x):
        r = self.request
        return (r.id, r.called_directly, r.is_eager, r.args, r.retries, r.delivery_info["is_eager"])

    assert who.request.id is None and who.request.called_directly and not who.request.is_eager
    assert who(7) == (None, True, False, (7,), 0, False)
    eager = who.apply((8,), task_id="e1").get()
    assert eager == ("e1", False, True, (8,), 0, True)
    assert current_request.get() is None  # nothing leaks out of a run


def test_retry_called_directly_raises_the_exception_itself():
    app = make_app()

    @app.task(name="t.direct", bind=True)
    def direct(self):
        raise self.retry(exc=LookupError("as Celery: the original"))

    with pytest.raises(LookupError):
        direct()


def test_the_worker_handler_still_sees_its_own_request():
    """A task called through the handler (run_sync, as the worker does) keeps the
    worker's request; __call__ only sets a local one when called as a function."""
    app = make_app()

    @app.task(name="t.ctx", bind=True)
    def ctx(self):
        return self.request.id

    outcome = run_sync(ctx, Request(id="w-1", task="t.ctx", reply_to="r", headers={"result": True}), Codec(), "json")
    assert outcome.value == "w-1"


# -- get() inside a task ----------------------------------------------------------------------

def test_get_inside_a_running_task_is_refused_as_in_celery():
    app = make_app("queues: {q: {}}\ndefaults: {queue: q}")
    child = app.task(name="t.child")(lambda: 1)

    @app.task(name="t.parent")
    def parent():
        return child.delay().get(timeout=1)

    with TestBroker(app) as broker:
        result = parent.delay()
        broker.run_all()
        with pytest.raises(Exception) as caught:
            result.get()
    assert type(caught.value).__name__ == "BlockingGetError"
    assert "never call result.get() within a task" in str(caught.value)
    token = current_request.set(Request(id="x", task="t.parent"))
    try:
        with pytest.raises(RuntimeError):  # Celery raises RuntimeError; this is one
            assert_will_not_block()
    finally:
        current_request.reset(token)
    assert issubclass(BlockingGetError, RuntimeError)


def test_get_is_allowed_outside_tasks_in_eager_runs_and_when_disabled():
    assert_will_not_block()  # no task running
    token = current_request.set(LocalRequest(id="e", task="t", is_eager=True, called_directly=False))
    try:
        assert_will_not_block()
    finally:
        current_request.reset(token)
    app = make_app("queues: {q: {}}\ndefaults: {queue: q}")
    child = app.task(name="t.child")(lambda: 1)

    @app.task(name="t.parent")
    def parent():
        try:
            child.delay().get(timeout=0.01, disable_sync_subtasks=False)
        except amqtask.results.TimeoutError:
            return "waited, as asked"

    with TestBroker(app) as broker:
        result = parent.delay()
        broker.run_all()
        assert result.get() == "waited, as asked"


# -- exceptions -------------------------------------------------------------------------------

def test_celery_exception_names_are_amqtasks_own_classes():
    from amqtask import errors, results
    from amqtask.worker import request

    assert exceptions.TimeoutError is results.TimeoutError
    assert exceptions.TaskRevokedError is results.TaskRevokedError
    for name in ("Retry", "Reject", "MaxRetriesExceededError", "SoftTimeLimitExceeded", "TimeLimitExceeded",
                 "WorkerLostError"):
        assert getattr(exceptions, name) is getattr(request, name)
    assert exceptions.Ignore is errors.Ignore and exceptions.CeleryError is errors.AmqtaskError
    assert exceptions.QueueNotFound is errors.RoutingError and exceptions.OperationalError is errors.BrokerError
    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), errors.AmqtaskError), name


def test_unknown_task_name_raises_not_registered_a_key_error():
    app = make_app()
    with pytest.raises(exceptions.NotRegistered) as caught:
        app.tasks["nope"]
    assert isinstance(caught.value, KeyError) and "'nope' is not registered" in str(caught.value)
    assert app.tasks.get("nope") is None and "nope" not in app.tasks


# -- shared_task --------------------------------------------------------------------------------

def test_shared_task_belongs_to_apps_before_and_after_it_and_uses_the_current_one():
    before = App("before", settings=check_text("{}").settings, task_always_eager=True)

    @shared_task(name="shared.mul", bind=True)
    def mul(self, x, y):
        return (x * y, self.app.name)

    after = App("after", settings=check_text("{}").settings, task_always_eager=True)
    assert "shared.mul" in before.tasks and "shared.mul" in after.tasks
    assert before.tasks["shared.mul"] is not after.tasks["shared.mul"]
    assert mul.delay(2, 3).get() == (6, "after")  # the newest App is the default
    before.set_current()
    try:
        assert mul.delay(2, 4).get() == (8, "before")
        assert mul(1, 1) == (1, "before")  # called directly: runs here
    finally:
        after.set_current()
    assert repr(mul) == "<shared task shared.mul>" and mul.name == "shared.mul"


def test_shared_task_is_found_by_the_worker_handler_and_by_signals():
    @shared_task(name="shared.echo")
    def echo(x):
        return x

    app = make_app()
    assert "shared.echo" in app.tasks  # set_as_current=False apps get shared tasks too
    heard = []
    receiver = lambda sender=None, **kw: heard.append(sender.name)  # noqa: E731
    signals.task_success.connect(receiver, sender=echo, weak=False)
    try:
        app.tasks["shared.echo"].apply((1,))
    finally:
        signals.task_success.disconnect(receiver, sender=echo)
    assert heard == ["shared.echo"]


# -- app.conf --------------------------------------------------------------------------------------

def test_conf_reads_settings_under_celerys_names():
    app = make_app(CONFIG, task_always_eager=True)
    conf = app.conf
    assert conf.broker_url == "amqp://u:p%40ss@mq.example:5673/prod"
    assert conf["BROKER_URL"] == conf.broker_url and conf.broker_heartbeat == 20
    assert (conf.task_default_queue, conf.task_default_exchange, conf.task_default_routing_key) == (
        "work", "tasks", "work")
    assert conf.task_default_exchange_type == "topic" and conf.task_serializer == "msgpack"
    assert (conf.worker_concurrency, conf.CELERYD_PREFETCH_MULTIPLIER, conf.worker_pool) == (3, 2, "threads")
    assert conf.result_backend is None and conf.result_expires == 3600  # off unless configured, as in Celery
    assert conf.task_always_eager is True and conf.task_acks_late is True
    assert dict(conf)["accept_content"] == ["json", "msgpack", "yaml"] and len(conf) == len(list(conf))


def test_conf_is_read_only_and_names_what_it_lacks():
    conf = make_app().conf
    with pytest.raises(ReadOnlyConf, match="read-only"):
        conf.broker_url = "amqp://elsewhere//"
    with pytest.raises(TypeError):
        conf["task_serializer"] = "pickle"
    with pytest.raises(ReadOnlyConf):
        conf.update(task_serializer="pickle")
    with pytest.raises(KeyError, match="did you mean 'worker_concurrency'"):
        conf["worker_concurency"]
    with pytest.raises(AttributeError):
        conf.task_routes  # noqa: B018 - routing lives in routing.yaml, not in conf


def test_conf_old_names_are_celerys_own():
    from celery.app.defaults import _TO_NEW_KEY

    assert {old: _TO_NEW_KEY[old] for old in OLD_NAMES} == OLD_NAMES


# -- config_from_object ------------------------------------------------------------------------------

def test_config_from_object_translates_and_warns_for_harmless_leftovers():
    app = make_app()
    with pytest.warns(CeleryConfigWarning) as warned:
        app.config_from_object("tests.celery_configs.seed_000")
    text = "\n".join(str(w.message) for w in warned)
    assert "concurrunt" in text and "refuses to load" in text
    assert str(app.settings.timezone) == "Europe/Oslo"  # translated, not a leftover
    assert app.settings.worker.max_tasks_per_child == 10 and app.conf.worker_prefetch_multiplier == 1
    assert app.conf.result_backend == "rpc://"


def test_config_from_object_refuses_what_would_change_behaviour():
    app = make_app(CONFIG)
    with pytest.raises(CeleryConfigError) as caught:
        app.config_from_object("tests.celery_configs.seed_004")  # a Redis broker
    assert "broker_url" in str(caught.value) and "redis" in str(caught.value)
    assert app.conf.task_default_exchange == "tasks"  # nothing was replaced


def test_config_from_object_with_objects_namespace_and_app_options():
    app = make_app()

    class Config:
        task_default_queue = "jobs"
        task_always_eager = True
        imports = ("json",)

    app.config_from_object(Config)
    assert app.task_always_eager and app.conf.task_default_queue == "jobs" and app.imports == ("json",)
    app.config_from_object({"CELERY_TASK_EAGER_PROPAGATES": True, "CELERY_TASK_DEFAULT_QUEUE": "x"},
                           namespace="CELERY")
    assert app.task_eager_propagates and app.conf.task_default_queue == "x"
    app.config_from_object("tests.celery_configs.no_such_module", silent=True)
    with pytest.raises(amqtask.AmqtaskError, match="no module named"):
        app.config_from_object("tests.celery_configs.no_such_module")


# -- autodiscover_tasks and load_app ---------------------------------------------------------------

@pytest.fixture
def packages(tmp_path, monkeypatch):
    root = tmp_path / "site"
    for name, tasks in (("shop", "from amqtask import shared_task\n\n@shared_task(name='shop.checkout')\n"
                                 "def checkout():\n    return 'paid'\n"),
                        ("accounts", None), ("broken", "raise ImportError('a real error inside tasks.py')\n")):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
        if tasks is not None:
            (root / name / "tasks.py").write_text(tasks)
    (root / "proj.py").write_text(textwrap.dedent("""
        from amqtask import App
        from amqtask.topology.loader import check_text
        app = App("proj", settings=check_text("{}").settings)
        app.autodiscover_tasks(lambda: ["shop", "accounts"])
    """))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("shop", "shop.tasks", "accounts", "broken", "broken.tasks", "proj"):
        sys.modules.pop(name, None)


def test_autodiscover_is_lazy_until_the_worker_loads_the_app(packages):
    app = load_app("proj")  # what `amqtask worker -A proj` does
    assert app.tasks["shop.checkout"].apply().get() == "paid"
    assert "accounts.tasks" not in sys.modules  # no tasks module there: skipped


def test_autodiscover_force_imports_now_and_real_errors_surface(packages):
    app = make_app()
    app.autodiscover_tasks(["shop"], force=True)
    assert "shop.checkout" in app.tasks
    with pytest.raises(ImportError, match="a real error inside tasks.py"):
        app.autodiscover_tasks(["broken"], force=True)
    lazy = make_app()
    lazy.autodiscover_tasks(["broken"])
    with pytest.raises(ImportError):
        lazy.import_default_modules()


# -- App options and context managers ---------------------------------------------------------------

class FakePublisher:
    def __init__(self):
        self.closed = []

    def close(self):
        self.closed.append("close")

    async def aclose(self):
        self.closed.append("aclose")


def test_app_is_a_context_manager_sync_and_async():
    with make_app() as app:
        app._publisher = fake = FakePublisher()
    assert fake.closed == ["close"]

    async def use():
        async with make_app() as app:
            app._publisher = fake = FakePublisher()
        return fake.closed

    assert asyncio.run(use()) == ["aclose", "close"]


def test_app_broker_and_include_options():
    app = App("t", settings=check_text("{}").settings, broker="amqps://u:pw@mq:5671/v", include=["json"],
              set_as_current=False)
    assert app.settings.broker.urls[0].tls and app.conf.broker_url == "amqps://u:pw@mq:5671/v"
    assert app.imports == ("json",)
    app.import_default_modules()
    bad = App("t", settings=check_text("{}").settings, include=["no_such_mod_xyz"], set_as_current=False)
    with pytest.raises(amqtask.AmqtaskError, match="no_such_mod_xyz"):
        bad.import_default_modules()


def test_warning_category_is_public():
    assert issubclass(CeleryConfigWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_app().config_from_object({"task_default_queue": "q", "task_acks_late": True})
