"""`amqtask import-celery` on the five seed configurations and our own: every output
passes `amqtask check`, and every task name goes where Celery's own publish sends it."""
from __future__ import annotations

import re

import pytest
import yaml
from click.testing import CliRunner
from kombu.transport.base import to_rabbitmq_queue_arguments

from amqtask.celery_import import CHANGED, IGNORED, IMPLICIT, NOT_TRANSLATED, TRANSLATED, import_celery
from amqtask.cli import main
from amqtask.router import Router
from amqtask.topology import loader
from tests.celery_oracle import celery_app, celery_destination, task_names

SPECS = {  # module (under tests.celery_configs) -> namespace
    "seed_000": None, "seed_000_tasks": None, "seed_001": None, "seed_002_wedo.tasks:app": None,
    "seed_002_wedo.config": None, "seed_003_config": None, "seed_003_celery": None, "seed_004": None,
    "own_new_names": None, "own_old_names": None, "own_django": "CELERY",
}


def translated(spec):
    return import_celery(f"tests.celery_configs.{spec}", namespace=SPECS[spec], task_names=task_names(spec))


def entry(translation, setting, status=None):
    found = [e for e in translation.report.entries if e.setting == setting and (status is None or e.status == status)]
    assert found, f"no report entry for {setting} ({status}): {translation.report.format()}"
    return found[0]


@pytest.mark.parametrize("spec", SPECS)
def test_output_passes_amqtask_check(spec, tmp_path):
    out = tmp_path / "routing.yaml"
    args = ["import-celery", f"tests.celery_configs.{spec}", "-o", str(out)]
    args += [a for name in task_names(spec) for a in ("--task", name)]
    args += ["--namespace", SPECS[spec]] if SPECS[spec] else []
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    checked = CliRunner().invoke(main, ["check", "--config", str(out)])
    assert checked.exit_code == 0, checked.output + out.read_text()
    assert ": OK:" in checked.output


@pytest.mark.parametrize("spec", SPECS)
def test_every_task_goes_where_celery_publishes_it(spec):
    translation = translated(spec)
    router = Router(translation.settings)
    app = celery_app(spec, SPECS[spec])
    for name in task_names(spec):
        exchange, key = celery_destination(app, name)
        ours = router.route(name)
        if (ours.exchange, ours.routing_key) == (exchange, key):
            continue
        # Documented cases only: a literal wildcard key becomes its one queue, and a
        # destination Celery loses is reported.
        reached = translation.settings.topology.route(exchange, key)
        assert reached and translation.settings.topology.route(ours.exchange, ours.routing_key) == reached, (
            f"{name}: Celery {exchange}/{key} ({sorted(reached)}), amqtask {ours}")


@pytest.mark.parametrize("spec", SPECS)
def test_route_command_shows_celerys_destination(spec, tmp_path):
    out = tmp_path / "routing.yaml"
    out.write_text(translated(spec).text)
    app = celery_app(spec, SPECS[spec])
    for name in task_names(spec):
        exchange, key = celery_destination(app, name)
        result = CliRunner().invoke(main, ["route", name, "--config", str(out)])
        assert result.exit_code == 0, result.output
        if "*" not in key and "#" not in key:
            assert f"exchange:    {exchange or '(default exchange)'}\n" in result.output
            assert f"routing key: {key}\n" in result.output


@pytest.mark.parametrize("spec", SPECS)
def test_queues_and_bindings_are_the_ones_celery_declares(spec):
    """Each queue of Celery's (normalised by Celery: default exchange and key filled in)
    is declared with kombu's own arguments and bindings."""
    translation = translated(spec)
    app = celery_app(spec, SPECS[spec])
    topology = translation.settings.topology
    for queue in app.amqp.queues.values():
        assert queue.name in topology.queues, queue.name
        ours = {(b.source, b.routing_key) for b in topology.bindings_to_queue(queue.name)}
        expected = {(queue.exchange.name, queue.routing_key or "")} if queue.exchange and queue.exchange.name else set()
        expected |= {(b.exchange.name, b.routing_key or "") for b in queue.bindings}
        assert ours == expected, queue.name
        args = to_rabbitmq_queue_arguments(queue.queue_arguments or {}, expires=queue.expires,
                                           message_ttl=queue.message_ttl, max_length=queue.max_length,
                                           max_length_bytes=queue.max_length_bytes, max_priority=queue.max_priority)
        assert dict(topology.queues[queue.name].arguments) == args
        assert topology.exchanges[queue.exchange.name].type == queue.exchange.type


def test_seed_001_old_names_translated():
    t = translated("seed_001")
    s = t.settings
    assert [u.host for u in s.broker.urls] == ["localhost"] and s.broker.urls[0].vhost == "web_develop"
    assert (s.defaults.exchange, s.defaults.routing_key, s.defaults.queue) == ("tasks", "task.#", "default")
    assert s.defaults.serializer == "msgpack" and s.defaults.compression == "zlib"
    assert s.broker.accept_content == ("json", "msgpack")
    assert s.topology.exchanges["tasks"].type == "topic"
    assert (s.worker.concurrency, s.worker.prefetch_multiplier, s.worker.max_tasks_per_child) == (4, 4, 40)
    assert s.worker.time_limit == 5
    assert s.results.expires_ms == 86_400_000
    assert Router(s).options_for("projq.tasks.add").acks_late is True
    assert entry(t, "CELERYD_PREFETCH_MULTIPLIER").status == CHANGED
    backend = entry(t, "CELERY_RESULT_BACKEND")
    if "backend" not in loader.RESULTS_KEYS:
        assert backend.status == NOT_TRANSLATED and backend.changes_behaviour
    schedule = entry(t, "CELERYBEAT_SCHEDULE['add']")
    assert "every 10s" in schedule.detail and "projb.tasks.add" in schedule.detail
    assert "args [16, 16]" in schedule.detail
    assert "dongwm:123456" not in t.report.format() and "dongwm:***@" in t.report.format()


def test_seed_000_mixed_names_are_reported_and_the_typo_named():
    t = translated("seed_000")
    assert any("refuses" in p and "CELERYD_MAX_TASKS_PER_CHILD -> worker_max_tasks_per_child" in p
               for p in t.report.problems)
    assert t.settings.worker.max_tasks_per_child == 10
    typo = entry(t, "concurrunt", IGNORED)
    assert "did you mean worker_concurrency" in typo.detail
    assert t.settings.worker.prefetch_multiplier == 1
    assert t.settings.results.enabled is True  # rpc://


def test_seed_003_namespaced_names_without_namespace_are_explained():
    t = translated("seed_003_config")
    detail = entry(t, "CELERY_TASK_TIME_LIMIT", IGNORED).detail
    assert "namespaced form of task_time_limit" in detail and "--namespace CELERY" in detail
    assert entry(t, "BROKER_URL").changes_behaviour  # Redis
    assert t.settings.worker.concurrency == 6
    assert "BROKER_TRANSPORT_OPTIONS['fanout_prefix']" in {e.setting for e in t.report.entries}


def test_celery_app_sources_read_its_settings_and_tasks():
    t = import_celery("tests.celery_configs.seed_002_wedo.tasks:app")
    assert {"wedo.tasks.add", "wedo.period_task.report"} <= {line.split(" ")[0] for line in t.report.checked_routes}
    # The app read old names, so Celery's table names the schedule the old way too.
    assert "CELERYBEAT_SCHEDULE['morning-report']" in {e.setting for e in t.report.entries}
    assert not t.report.problems  # an app may set new names after loading old ones


def test_own_new_names_kombu_objects_and_routers():
    t = translated("own_new_names")
    topology = t.settings.topology
    assert topology.exchanges["by_header"].type == "headers"
    pdf = topology.bindings_to_queue("pdf")[0]
    assert dict(pdf.arguments) == {"x-match": "all", "format": "pdf"}
    assert dict(topology.queues["images"].arguments) == {"x-message-ttl": 60000, "x-max-length": 1000}
    router = Router(t.settings)
    assert router.rule_for("ingest.csv").pattern == r"re:(?:(ingest|etl)\.)(?s:.*)"
    assert router.rule_for("legacy.cleanup").kind == "exact"  # evaluated router named by string
    assert router.route("reports.daily").priority == 3
    assert router.options_for("media.encode").rate_limit == "10/m"  # its annotation
    assert router.options_for("other.thing").rate_limit == "100/s"  # task_default_rate_limit, catch-all
    assert router.options_for("notify.email").acks_late is True  # the '*' annotation
    assert "max_retries" in entry(t, "task_annotations['notify.email'][max_retries]", NOT_TRANSLATED).setting
    assert t.settings.broker.confirm_publish is True and t.settings.broker.heartbeat == 30
    assert t.settings.broker.accept_content == ("json", "msgpack")
    assert t.settings.worker.pool == "threads"


def test_glob_and_regex_semantics_match_celerys_map_route():
    """Celery matches route keys with '*' as globs, compiled regexes with .match (start
    anchored only), and every other key literally, '?' and '[' included."""
    from celery.app.routes import MapRoute

    routes = {"a.*": "q1", re.compile(r"b\d"): "q2", "c?d": "q3", "lit[x]": "q4"}
    names = ["a.x", "a.", "b1", "b1.more", "xb1", "c?d", "cxd", "lit[x]", "litx"]
    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    t = translate(CeleryConfig("inline", {"task_routes": [routes]}), task_names=names)
    router = Router(t.settings)
    celery = MapRoute(routes)
    for name in names:
        expected = celery(name)
        ours = router.rule_for(name)
        assert (ours is not None and ours.queue) == (expected["queue"] if expected else False), name


def test_annotations_star_wins_as_in_celery():
    from celery.app.annotations import prepare, resolve_all

    annotations = [{"t.a": {"rate_limit": "1/s", "time_limit": 5}}, {"*": {"rate_limit": "9/m"}}]

    class FakeTask:
        name = "t.a"

    celery_view = {}
    for d in resolve_all(prepare(annotations), FakeTask):
        celery_view.update(d)
    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    t = translate(CeleryConfig("inline", {"task_annotations": annotations}), task_names=["t.a"])
    options = Router(t.settings).options_for("t.a")
    assert (options.rate_limit, options.time_limit) == (celery_view["rate_limit"], celery_view["time_limit"])


def test_own_old_names_compat_queues_and_legacy_router_class():
    t = translated("own_old_names")
    router = Router(t.settings)
    assert router.rule_for("feeds.tasks.import_feed") is not None  # LegacyRouter.route_for_task
    assert t.settings.topology.exchanges["feeds"].type == "topic"
    assert "created_on_demand" in t.settings.topology.queues  # Celery creates it on first publish
    assert t.settings.worker.pool == "solo"
    assert entry(t, "CELERY_RESULT_BACKEND").status == CHANGED  # the old amqp backend
    assert t.app_options["task_always_eager"] is False


def test_django_namespace():
    t = translated("own_django")
    assert t.settings.defaults.queue == "shop"
    assert Router(t.settings).options_for("shop.tasks.checkout").acks_late is False
    assert t.settings.worker.max_tasks_per_child == 100
    assert t.app_options["task_always_eager"] is True
    assert "outside the namespace" in entry(t, "DEBUG").detail


def test_implicit_celery_defaults_are_written_out():
    t = translated("seed_004")
    doc = yaml.safe_load(t.text)
    assert doc["defaults"] == {"exchange": "", "routing_key": "celery", "queue": "celery"}
    assert doc["exchanges"] == {"celery": {"type": "direct"}}
    assert doc["queues"]["celery"]["bindings"] == [{"exchange": "celery", "routing_key": "celery"}]
    assert doc["results"] == {"enabled": False}
    assert doc["broker"] == {"accept_content": ["json"]}  # Redis is not translated; $AMQTASK_BROKER_URL applies
    assert {e.setting for e in t.report.entries if e.status == IMPLICIT} >= {
        "task_default_queue", "task_default_exchange", "task_default_routing_key", "result_backend", "worker_pool"}
    # Celery's default pool, written out: each task in a forked child, as before the move
    assert doc["worker"]["pool"] == "prefork"
    assert yaml.safe_load(translated("own_new_names").text)["worker"]["pool"] == "threads"  # as configured


def test_wildcard_routing_key_keeps_exchange_and_queues():
    """Celery publishes {'queue': Q} on a topic exchange with Q's binding pattern as a
    literal key; routing.yaml refuses wildcard keys, so a word no binding uses stands
    in for the wildcard: same exchange, same queues."""
    from kombu import Exchange, Queue

    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    tx = Exchange("tx", "topic")
    config = {"task_queues": [Queue("top", tx, routing_key="a.*"), Queue("all", tx, routing_key="#"),
                              Queue("any", tx, routing_key="a.any")],
              "task_routes": {"x.top": {"queue": "top"}}}
    t = translate(CeleryConfig("inline", config), task_names=["x.top"])
    rule = Router(t.settings).rule_for("x.top")
    assert (rule.exchange, rule.routing_key) == ("tx", "a.any1")  # 'any' is a bound word
    assert t.settings.topology.route("tx", "a.any1") == t.settings.topology.route("tx", "a.*") == {"top", "all"}
    assert any(e.status == CHANGED and "literal key 'a.*'" in e.detail for e in t.report.entries)
    assert t.report.checked_routes == ("x.top -> exchange 'tx' key 'a.*' -> all, top",)


def test_wildcard_key_on_a_direct_exchange_names_the_queue():
    from kombu import Exchange, Queue

    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    config = {"task_queues": [Queue("lit", Exchange("dx", "direct"), routing_key="a.*")],
              "task_routes": {"x": {"exchange": "dx", "routing_key": "a.*"}}}
    t = translate(CeleryConfig("inline", config), task_names=["x"])
    assert Router(t.settings).rule_for("x").queue == "lit"


def test_routes_celery_would_lose_are_reported_not_written():
    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    config = {"task_routes": {"lost.no_key": {"exchange": "celery"}, "lost.nowhere": {"exchange": "ghost",
                                                                                        "routing_key": "k"}}}
    t = translate(CeleryConfig("inline", config), task_names=["lost.no_key", "lost.nowhere"])
    assert not t.settings.routes
    text = "\n".join(t.report.problems)
    assert "lost.no_key" in text and "RabbitMQ drops them" in text
    assert "lost.nowhere" in text and "404" in text


def test_items_amqtask_check_refuses_are_left_out_and_reported():
    """A queue name RabbitMQ reserves ('amq.') is refused by check: the queue and the route
    that needs it are left out, with check's reason in the report and the file."""
    from kombu import Queue

    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    config = {"task_queues": [Queue("amq.bad"), Queue("good")], "task_routes": {"t.x": {"queue": "amq.bad"}},
              "task_default_queue": "good"}
    t = translate(CeleryConfig("inline", config), task_names=["t.x"])
    assert "amq.bad" not in t.settings.topology.queues and "good" in t.settings.topology.queues
    assert any("queue 'amq.bad'" in p and "reserved prefix" in p for p in t.report.problems)
    assert "# Left out because amqtask check refuses them:" in t.text
    assert loader.check_text(t.text).settings is not None


def test_schedules_and_timezone_are_emitted_when_the_loader_knows_them(monkeypatch):
    monkeypatch.setattr(loader, "SECTIONS", loader.SECTIONS + ("schedules", "timezone"))
    t = translated("own_new_names")
    doc = yaml.safe_load(t.text)
    assert doc["timezone"] == "Europe/Oslo"
    assert doc["schedules"]["every-10s"] == {"task": "media.thumbnail", "every": "10s", "args": [1]}
    assert doc["schedules"]["every-5m"] == {"task": "reports.daily", "every": "5m", "kwargs": {"full": True},
                                            "options": {"queue": "default"}}
    assert doc["schedules"]["weekday-mornings"] == {"task": "reports.daily", "crontab": "0 7,8 * * mon-fri"}
    assert doc["schedules"]["hourly"]["every"] == "1h"
    assert "by-name" not in doc["schedules"]
    monthly = entry(t, "beat_schedule['first-monday']", CHANGED)
    assert "either" in monthly.detail  # cron ORs day-of-month and day-of-week, Celery ANDs them


def test_schedules_are_reported_not_emitted_by_a_loader_without_them(monkeypatch):
    monkeypatch.setattr(loader, "SECTIONS", tuple(s for s in loader.SECTIONS if s not in ("schedules", "timezone")))
    t = translated("own_new_names")
    assert "schedules" not in yaml.safe_load(t.text) and "timezone" not in yaml.safe_load(t.text)
    assert entry(t, "beat_schedule['weekday-mornings']", NOT_TRANSLATED).detail.startswith(
        "task reports.daily, crontab 0 7,8 * * mon-fri")


def test_result_backend_is_emitted_when_the_loader_knows_it(monkeypatch):
    monkeypatch.setattr(loader, "RESULTS_KEYS", loader.RESULTS_KEYS + ("backend",))
    t = translated("seed_001")
    assert yaml.safe_load(t.text)["results"]["backend"] == "redis://localhost:6379/0"
    assert entry(t, "CELERY_RESULT_BACKEND").status == TRANSLATED


def test_crontab_fields_in_cron_order():
    from celery.schedules import crontab

    from amqtask.celery_import.schedules import crontab_expression, duration

    assert crontab_expression(crontab(minute="*/15", hour="9-17", day_of_week="mon-fri")) == "*/15 9-17 * * mon-fri"
    assert crontab_expression(crontab(minute=0, hour=[1, 2], day_of_month="1", month_of_year="*/3")) == "0 1,2 1 */3 *"
    assert [duration(s) for s in (10, 90, 3600, 86400 * 2, 0.25)] == ["10s", "90s", "1h", "2d", "250ms"]


def test_broker_password_with_dollar_survives_variable_expansion():
    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    t = translate(CeleryConfig("inline", {"broker_url": "amqp://u:pa$$w}rd@h:5672/v"}))
    assert t.settings.broker.urls[0].password == "pa$$w}rd"


def test_not_a_rabbitmq_broker_is_not_translated_and_blocks():
    from amqtask.celery_import import translate
    from amqtask.celery_import.source import CeleryConfig

    t = translate(CeleryConfig("inline", {"broker_url": "sqs://key:secret@"}))
    blocking = t.report.blocking
    assert [e.setting for e in blocking] == ["broker_url"] and "secret" not in t.report.format()


@pytest.mark.parametrize("source, message", [
    ("tests.celery_configs.no_such_module", "no module named"),
    ("{path}/broken.py", "syntax error"),
    ("{path}/raises.py", "ZeroDivisionError"),
    ("{path}/missing.py", "no such file"),
    ("tests.celery_configs.seed_001:NOPE", "has no attribute"),
])
def test_unreadable_sources_exit_2_with_one_line(source, message, tmp_path):
    (tmp_path / "broken.py").write_text("BROKER_URL = \n")
    (tmp_path / "raises.py").write_text("BROKER_URL = 1 / 0\n")
    result = CliRunner().invoke(main, ["import-celery", source.format(path=tmp_path)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("value", [5, "garbage", [("only-one",)], {"a": None}])
def test_garbage_routes_are_reported_not_crashing(value, tmp_path):
    path = tmp_path / "garbage.py"
    path.write_text(f"task_routes = {value!r}\n")
    result = CliRunner().invoke(main, ["import-celery", str(path), "--task", "a"])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        out = tmp_path / "r.yaml"
        out.write_text(result.stdout)
        assert loader.check_file(out).settings is not None


def test_output_is_refused_over_an_existing_file_without_force(tmp_path):
    out = tmp_path / "routing.yaml"
    out.write_text("keep me")
    result = CliRunner().invoke(main, ["import-celery", "tests.celery_configs.seed_004", "-o", str(out)])
    assert result.exit_code == 2 and out.read_text() == "keep me"
    result = CliRunner().invoke(main, ["import-celery", "tests.celery_configs.seed_004", "-o", str(out), "--force",
                                       "--report", str(tmp_path / "report.txt")])
    assert result.exit_code == 0 and out.read_text().startswith("# routing.yaml translated")
    assert "implicit Celery default" in (tmp_path / "report.txt").read_text()
