"""The CLI without a broker: check, routes, route, declare --dry-run, argument errors."""
import subprocess
import sys

from click.testing import CliRunner

from amqtask.cli import main


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env or {})


def test_check_ok(example_config):
    result = run("check", "--config", str(example_config))
    assert result.exit_code == 0, result.output
    assert "OK: 7 exchanges, 10 queues" in result.output
    assert "guest:***@" in result.output and "guest:guest" not in result.output


def test_check_reports_unknown_key_with_line(example_config, tmp_path):
    bad = tmp_path / "routing.yaml"
    bad.write_text(example_config.read_text() + "unknwn_section: 1\n")
    line = len(bad.read_text().splitlines())
    result = run("check", "--config", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:{line}:1: error: unknown key 'unknwn_section'" in result.output


def test_check_syntax_error_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("queues:\n  q: [\n")
    proc = subprocess.run([sys.executable, "-m", "amqtask.cli", "check", "--config", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "YAML syntax error" in proc.stderr and "Traceback" not in proc.stderr


def test_config_from_environment(example_config):
    result = run("check", env={"AMQTASK_CONFIG": str(example_config)})
    assert result.exit_code == 0 and str(example_config) in result.output


def test_routes_and_route(example_config):
    result = run("routes", "--config", str(example_config))
    assert result.exit_code == 0
    assert "projq.tasks.add" in result.output and "(anything else)" in result.output
    result = run("route", "projq.notify.email", "--config", str(example_config))
    assert result.exit_code == 0
    assert "broadcast" in result.output and "audit" in result.output and "glob" in result.output


def test_declare_dry_run_needs_no_broker(example_config):
    result = run("declare", "--dry-run", "--config", str(example_config),
                 env={"AMQTASK_BROKER_URL": "amqp://u:secret@127.0.0.1:1//"})
    assert result.exit_code == 0
    assert "invoices: durable {'x-queue-type': 'quorum'" in result.output
    assert "secret" not in result.output


def test_call_rejects_bad_json(example_config):
    result = run("call", "projq.tasks.add", "--args", "[2,", "--config", str(example_config))
    assert result.exit_code == 2 and "--args is not valid JSON" in result.output
    result = run("call", "projq.tasks.add", "--args", "{}", "--config", str(example_config))
    assert result.exit_code == 2 and "JSON list" in result.output


def test_broker_down_is_exit_1_without_password(example_config):
    result = run("call", "projq.tasks.add", "--config", str(example_config),
                 env={"AMQTASK_BROKER_URL": "amqp://u:hunter2@127.0.0.1:1//"})
    assert result.exit_code == 1
    assert "cannot connect to the broker" in result.output and "hunter2" not in result.output


def test_help_everywhere():
    for command in ([], ["check"], ["routes"], ["route"], ["declare"], ["call"], ["purge"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


# -- Celery's command lines: global options, worker flags ------------------------------------
import logging  # noqa: E402
import os  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

import amqtask.cli.worker as worker_cli  # noqa: E402

from .conftest import MINIMAL_YAML, ROOT  # noqa: E402


class Project:
    """A Celery-shaped project in a directory of its own: an App module (`name`) and
    its routing.yaml."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.name = f"proj_{uuid.uuid4().hex[:8]}"
        self.config = directory / "routing.yaml"
        self.config.write_text(MINIMAL_YAML)
        (directory / f"{self.name}.py").write_text(
            "from amqtask import App\n"
            f"app = App('proj', config={str(self.config)!r}, set_as_current=False)\n"
            "@app.task(name='projq.tasks.add')\n"
            "def add(x, y):\n"
            "    return x + y\n")


class Started:
    """What `amqtask worker` would have run: the App, WorkerConfig, monitor settings and
    log level, captured instead of consuming."""

    app = config = monitor = level = logfile = None


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.path", [str(tmp_path), *__import__("sys").path])
    monkeypatch.chdir(ROOT)
    return Project(tmp_path)


@pytest.fixture
def started(monkeypatch, caplog):
    seen = Started()

    def run_workers(app, config, monitor, sizing, name_template):
        seen.app, seen.config, seen.monitor, seen.sizing = app, config, monitor, sizing
        return 0

    def start_logging(level, logfile):
        seen.level, seen.logfile = level, logfile

    monkeypatch.setattr(worker_cli, "_run_workers", run_workers)
    monkeypatch.setattr(worker_cli, "_start_logging", start_logging)
    caplog.set_level(logging.INFO, logger="amqtask.worker")
    return seen


def notes(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "amqtask.worker" and text in r.getMessage()]


def test_app_before_or_after_the_subcommand(project, started):
    before = run("-A", project.name, "worker", "--loglevel=info")  # celery -A proj worker --loglevel=info
    assert before.exit_code == 0, before.output
    assert started.app.name == "proj" and "projq.tasks.add" in started.app.tasks and started.level == "INFO"
    assert started.config.queues == ("default", "web_tasks", "audit")
    started.app = None
    after = run("worker", "--loglevel=INFO", f"--app={project.name}")  # Celery 4: celery worker --app=proj
    assert after.exit_code == 0, after.output
    assert started.app.name == "proj"


def test_worker_without_an_app_anywhere_is_a_usage_error():
    result = run("worker")
    assert result.exit_code == 2 and "Missing option '-A' / '--app'" in result.output


def test_python_dash_m_amqtask_is_the_command():
    shown = subprocess.run([sys.executable, "-m", "amqtask", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert shown.returncode == 0 and shown.stdout.startswith("amqtask, version")
    missing = subprocess.run([sys.executable, "-m", "amqtask", "worker", "--loglevel=DEBUG"], capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode == 2 and "Missing option '-A' / '--app'" in missing.stderr


def test_global_workdir_is_where_the_app_is_imported_from(project, started, monkeypatch):
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != str(project.directory)])
    result = run("--workdir", str(project.directory), "-A", project.name, "worker")
    assert result.exit_code == 0, result.output
    assert os.getcwd() == str(project.directory) and started.app.name == "proj"


@pytest.mark.parametrize("level", ["fatal", "FATAL", "Fatal"])
def test_celerys_fatal_level_is_critical(project, started, level):
    result = run("-A", project.name, "worker", "-l", level)
    assert result.exit_code == 0, result.output
    assert started.level == "CRITICAL"


def test_discard_is_celerys_purge(project, started):
    assert run("-A", project.name, "worker", "--discard").exit_code == 0
    assert started.config.purge is True


@pytest.mark.parametrize("flag", ["-E", "--events", "--task-events"])
def test_task_events_spellings(project, started, flag):
    assert run("-A", project.name, "worker", flag).exit_code == 0
    assert started.monitor.events is True


@pytest.mark.parametrize("where", ["global", "worker"])
def test_broker_flag_overrides_routing_yaml_and_hides_the_password(project, started, where):
    url = "amqp://celery:s3cret@10.9.8.7:5673/proj"
    args = ["-b", url, "-A", project.name, "worker"] if where == "global" else \
        ["-A", project.name, "worker", "--broker", url]
    result = run(*args)
    assert result.exit_code == 0, result.output
    broker = started.app.settings.broker.urls
    assert [(u.host, u.port, u.username, u.vhost) for u in broker] == [("10.9.8.7", 5673, "celery", "proj")]
    assert "amqp://celery:***@10.9.8.7:5673/proj" in result.output and "s3cret" not in result.output


def test_a_broker_flag_amqtask_cannot_use_is_a_usage_error(project, started):
    result = run("-A", project.name, "worker", "-b", "redis://localhost:6379/0")
    assert result.exit_code == 2 and "unsupported broker URL scheme 'redis'" in result.output


def test_statedb_is_accepted_and_said_once(project, started, caplog):
    result = run("-A", project.name, "worker", "-S", "/var/run/celery/worker.state", "--statedb", "w.db")
    assert result.exit_code == 0, result.output
    said = notes(caplog, "--statedb")
    assert len(said) == 1 and "RabbitMQ stream 'amqtask.revoked'" in said[0].getMessage()


def test_celery_4_spellings_and_pool_alias(project, started):
    result = run("-A", project.name, "worker", "--maxtasksperchild", "10", "--maxmemperchild", "2048",
                 "-P", "processes", "-c", "0", "--schedule-filename", "beat.db")
    assert result.exit_code == 0, result.output
    c = started.config
    assert (c.max_tasks_per_child, c.max_memory_per_child, c.pool) == (10, 2048, "prefork")
    cpus = len(os.sched_getaffinity(0))
    # 0: the default, as in Celery: one prefork child per CPU, here one process per CPU with one child each
    assert (started.sizing.concurrency, started.sizing.processes, c.concurrency) == (cpus, cpus, 1)


def test_concurrency_auto_is_the_cpus_this_process_may_use(project, started):
    assert run("-A", project.name, "worker", "-c", "auto").exit_code == 0
    assert started.sizing.concurrency == len(os.sched_getaffinity(0))
    refused = run("-A", project.name, "worker", "-c", "many")
    assert refused.exit_code == 2 and "whole number of pool slots or 'auto'" in refused.output


def test_eventlet_and_gevent_are_refused_with_what_to_use():
    for pool in ("eventlet", "gevent"):
        result = run("worker", "-A", "x", "-P", pool)
        assert result.exit_code == 2 and f"no {pool} pool" in result.output and "-P threads" in result.output


def test_every_flag_with_nothing_to_do_is_said_once(project, started, caplog):
    result = run("-C", "--loader", "celery.loaders.app:AppLoader", "-A", project.name, "worker", "-O", "default",
                 "--without-gossip", "--without-mingle", "-s", "beat.db", "--pool-start-method", "spawn",
                 "--disable-prefetch", "--executable", "/usr/bin/python3", "--scheduler",
                 "celery.beat:PersistentScheduler")
    assert result.exit_code == 0, result.output
    assert started.config.optimization == "fair"
    for flag in ("--no-color", "--loader", "-O default", "--without-gossip", "--without-mingle", "-s/",
                 "--pool-start-method", "--disable-prefetch", "--executable", "--scheduler"):
        assert len(notes(caplog, flag)) == 1, flag
    assert "note:" not in result.output  # the worker says them in its log, not on the terminal


def test_another_scheduler_is_a_warning(project, started, caplog):
    assert run("-A", project.name, "worker", "-B", "--scheduler",
               "django_celery_beat.schedulers:DatabaseScheduler").exit_code == 0
    said = notes(caplog, "DatabaseScheduler")
    assert len(said) == 1 and said[0].levelno == logging.WARNING and "do not run" in said[0].getMessage()


def test_quiet_leaves_out_the_banner(project, started):
    loud = run("-A", project.name, "worker")
    quiet = run("-q", "-A", project.name, "worker")
    assert "queues:" in loud.output and quiet.exit_code == 0 and "queues:" not in quiet.output


def test_global_config_reaches_every_subcommand(project, tmp_path):
    assert run("--config", str(project.config), "check").exit_code == 0
    routed = run("--config", str(project.config), "route", "projq.tasks.add")
    assert routed.exit_code == 0 and "web_tasks" in routed.output
    own = run("--config", "/nonexistent/routing.yaml", "route", "projq.tasks.add", "--config", str(project.config))
    assert own.exit_code == 0  # the subcommand's own --config wins


def test_global_app_gives_its_settings_to_commands_without_app(project):
    """`celery -A proj inspect ping` takes the broker from the App: so does amqtask."""
    result = run("-A", project.name, "routes")
    assert result.exit_code == 0, result.output
    assert "projq.tasks.add" in result.output and "web_tasks" in result.output


def test_a_celery_config_module_for_config_says_what_to_do(project):
    result = run("--config", "proj.celeryconfig", "check")
    assert result.exit_code == 2
    assert "amqtask import-celery proj.celeryconfig -o routing.yaml" in result.output


def test_global_broker_reaches_commands_that_read_routing_yaml(project):
    result = run("-b", "amqp://u:pw@127.0.0.1:1//", "call", "projq.tasks.add", "--config", str(project.config))
    assert result.exit_code == 1 and "127.0.0.1:1" in result.output and "pw@" not in result.output


def test_global_app_reaches_check(project):
    """`amqtask -A proj check`: the schedules are checked against proj's tasks."""
    project.config.write_text(MINIMAL_YAML + "schedules:\n  nightly: {task: projq.tasks.nope, every: 1h}\n")
    alone = run("check", "--config", str(project.config))
    with_app = run("-A", project.name, "check", "--config", str(project.config))
    assert alone.exit_code == 0 and "projq.tasks.nope" not in alone.output
    assert with_app.exit_code != 0 and "projq.tasks.nope" in with_app.output


def test_celery_4_global_options_after_worker_are_said_once(project, started, caplog):
    """Celery 4 read its global options anywhere: `celery worker -A proj -C --loader X`."""
    result = run("-C", "worker", "-A", project.name, "-C", "--loader", "celery.loaders.app:AppLoader",
                 "--skip-checks", "-q")
    assert result.exit_code == 0, result.output
    for flag in ("--no-color", "--loader", "--skip-checks"):
        assert len(notes(caplog, flag)) == 1, flag
    assert "queues:" not in result.output
