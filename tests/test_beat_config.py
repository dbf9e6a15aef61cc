"""Schedules as users write them: routing.yaml (checked with file:line), the Python
API (add_periodic_task, crontab), the messages a beat builds, and the commands that
refuse a broken schedule before touching the broker."""
import datetime as dt
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from amqtask import App, crontab
from amqtask.beat.dedupe import SCHEDULE_HEADER, SCHEDULED_FOR_HEADER
from amqtask.beat.plan import Run
from amqtask.beat.runner import build_message, check_schedules, jitter_delay
from amqtask.beat.state import scheduled_task_id
from amqtask.cli import main
from amqtask.errors import AmqtaskError, ScheduleError
from amqtask.publisher import CallOptions
from amqtask.schedules import REFUSED_OPTIONS, SCHEDULE_OPTION_NAMES, At, Crontab, Every, parse_crontab
from amqtask.settings import Settings
from amqtask.task import CANVAS_OPTIONS
from amqtask.topology.loader import check_text

from .conftest import ROOT

UTC = dt.timezone.utc

SCHEDULES = """
timezone: Europe/Oslo
schedules:
  add-every-10s:
    task: projq.tasks.add
    every: 10s
    args: [16, 16]
    kwargs: {}
    options: {queue: web_tasks, priority: 5, expires: 8s}
    missed: run_once
    jitter: 0s
  reports:
    task: projq.reports.nightly
    crontab: "0 */3 * * *"
    missed: skip
  celery-style:
    task: projq.web.index
    crontab: {minute: 0, hour: "*/3", day_of_week: mon-fri}
  christmas:
    task: projq.notify.greet
    at: 2026-12-24T18:00
    missed: run_all
    jitter: 2m
"""


def problems(result, severity="error"):
    return [(p.position.line, p.message, p.hint) for p in result.problems if p.severity == severity]


def test_schedules_from_yaml(minimal_yaml):
    result = check_text(minimal_yaml + SCHEDULES, environ={})
    assert result.problems == ()
    s = result.settings
    assert s.timezone == "Europe/Oslo"
    by_name = {e.name: e for e in s.schedules}
    add = by_name["add-every-10s"]
    assert add.schedule == Every(10_000) and add.args == (16, 16) and add.missed == "run_once"
    assert add.options == {"queue": "web_tasks", "priority": 5, "expires": 8.0}
    assert add.line == minimal_yaml.count("\n") + 4
    assert by_name["reports"].schedule == Crontab("0 */3 * * *") and by_name["reports"].missed == "skip"
    assert by_name["celery-style"].schedule == Crontab("0 */3 * * mon-fri")
    assert by_name["christmas"].schedule == At(dt.datetime(2026, 12, 24, 17, 0, tzinfo=UTC))  # 18:00 CET
    assert by_name["christmas"].jitter == 120.0


@pytest.mark.parametrize("snippet, message", [
    ("crontab: '0 25 * * *'", "invalid hour field '25'"),
    ("crontab: '61 * * * *'", "invalid minute field '61'"),
    ("crontab: '* * * *'", "a crontab has 5 fields"),
    ("crontab: '0 0 0 * * *'", "a crontab has 5 fields"),
    ("crontab: '0 0 31 2 *'", "never fires"),
    ("crontab: '@reboot'", "unknown crontab alias"),
    ("every: 10", "'every' needs a unit"),
    ("every: 10q", "must be a number of seconds or a string like '10s'"),
    ("every: 500ms", "at least 1s"),
    ("at: tomorrow", "'at' must be an ISO 8601 time"),
    ("args: []", "exactly one of 'every', 'crontab' or 'at', not none"),
])
def test_bad_timing_is_reported_at_its_line(minimal_yaml, snippet, message):
    text = minimal_yaml + f"schedules:\n  s:\n    task: projq.tasks.add\n    {snippet}\n"
    errors = problems(check_text(text, environ={}))
    assert len(errors) == 1, errors
    line, text_, _ = errors[0]
    assert message in text_
    assert line in (minimal_yaml.count("\n") + 2, minimal_yaml.count("\n") + 4)


def test_every_problem_in_schedules_is_reported_in_one_pass(minimal_yaml):
    base = minimal_yaml.count("\n")
    text = minimal_yaml + """\
timezone: Europe/Olso
beat: {group: "two words", size: 3}
schedules:
  a:
    task: projq.tasks.add
    every: 1m
    options: {prio: 3, eta: 5, expires: 0}
    missed: run_al
    jitter: soon
  b:
    every: 1m
  c:
    task: projq.tasks.add
    every: 1m
    options: {routing_key: zz.nowhere}
  d:
    task: projq.tasks.add
    every: 1m
    options: {queue: nope}
  e:
    task: projq.tasks.add
    every: 1m
    options: {ignore_result: maybe, serializer: pickle2}
"""
    result = check_text(text, environ={})
    found = {(line - base, msg.split(": ")[0].split("; ")[0]) for line, msg, _ in problems(result)}
    assert found == {
        (1, "unknown timezone 'Europe/Olso'"),
        (2, "beat group 'two words' must be 1-200 letters, digits or '_.:-'"),
        (2, "unknown key 'size' in 'beat'"),
        (7, "unknown option 'prio'"),
        (7, "option 'eta' cannot be set on a schedule"),
        (7, "option 'expires' must be greater than 0"),
        (8, "'missed' must be one of skip, run_once, run_all, not 'run_al'"),
        (9, "'jitter' must be a number of seconds or a string like '10s', '5m', '250ms', not 'soon'"),
        (10, "schedule 'b' needs 'task' (the task name to send)"),
        (15, "schedule 'c' reaches no queue"),
        (19, "schedule 'd' names undefined queue 'nope'"),
        (23, "option 'ignore_result' must be true or false, not 'maybe'"),
        (23, "'serializer' must be one of json, msgpack, yaml, pickle, not 'pickle2'"),
    }
    hints = {msg.split(";")[0]: hint for _, msg, hint in problems(result)}
    assert hints["unknown timezone 'Europe/Olso'"] == "did you mean 'Europe/Oslo'?"
    assert hints["unknown option 'prio'"] == "did you mean 'priority'?"


def test_unknown_task_when_the_app_is_known(minimal_yaml):
    text = minimal_yaml + """\
schedules:
  typo: {task: projq.tasks.ad, every: 1m}
  elsewhere: {task: billing.close_month, every: 1m}
"""
    result = check_text(text, environ={}, tasks=["projq.tasks.add", "projq.web.index"])
    assert problems(result) == [(minimal_yaml.count("\n") + 2, "task 'projq.tasks.ad' is not registered by the app",
                                 "did you mean 'projq.tasks.add'?")]
    assert [m for _, m, _ in problems(result, "warning")] == [
        "task 'billing.close_month' is not registered by the app"]
    assert check_text(text, environ={}).problems == ()  # without the app, names are not checked


def test_the_repository_routing_yaml_schedules_are_valid(example_config):
    from amqtask.topology.loader import check_file

    sys.path.insert(0, str(ROOT))
    from examples.tasks import app

    result = check_file(example_config, environ={}, tasks=app.tasks)
    assert result.problems == ()
    assert {e.name for e in result.settings.schedules} >= {"add-every-10s"}


# -- Python API -------------------------------------------------------------------------

def test_crontab_builds_five_fields_like_celery():
    assert crontab() == Crontab("* * * * *")
    assert crontab(minute=0, hour="*/3") == Crontab("0 */3 * * *")
    assert crontab(minute=[30, 0], hour=7, day_of_week="mon-fri") == Crontab("0,30 7 * * mon-fri")
    assert crontab(minute=0, hour=0, day_of_month=1, month_of_year=1) == Crontab("0 0 1 1 *")
    with pytest.raises(ScheduleError, match="invalid hour field '24'"):
        crontab(hour=24)
    with pytest.raises(ScheduleError, match="one cron field"):
        crontab(minute="0 1")
    with pytest.raises(AmqtaskError):
        crontab(minute=True)
    assert parse_crontab("  0   */3 * * * ") == Crontab("0 */3 * * *")
    assert parse_crontab("@Hourly") == Crontab("@hourly")


@dataclass
class Sig:
    """A signature as canvas builds them: task name, args, kwargs, options."""

    task: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def test_add_periodic_task_accepts_seconds_crontab_tasks_names_and_signatures():
    app = App("t", settings=Settings())

    @app.task(name="proj.add")
    def add(x, y):
        return x + y

    e1 = app.add_periodic_task(10.0, Sig("proj.add", (16, 16), {}, {"priority": 3}), name="add-every-10s")
    assert e1.schedule == Every(10_000) and e1.args == (16, 16) and e1.options == {"priority": 3}
    e2 = app.add_periodic_task(crontab(minute=0, hour="*/3"), add, args=(1, 2), expires="30s", missed="skip")
    assert e2.name == "proj.add(1, 2)" and e2.task == "proj.add" and e2.options == {"expires": 30.0}
    e3 = app.add_periodic_task(dt.timedelta(minutes=5), "proj.other", kwargs={"a": 1}, name="other", jitter="1s")
    assert e3.schedule == Every(300_000) and e3.kwargs == {"a": 1} and e3.jitter == 1.0
    assert set(app.periodic_tasks) == {"add-every-10s", "proj.add(1, 2)", "other"}
    assert check_schedules(app) == (e1, e2, e3)
    with pytest.raises(ScheduleError, match="unknown option 'prority'"):
        app.add_periodic_task(10, add, prority=3)
    with pytest.raises(ScheduleError, match="at least 1s"):
        app.add_periodic_task(0.5, add)
    with pytest.raises(ScheduleError, match="missed must be one of"):
        app.add_periodic_task(10, add, missed="sometimes")
    with pytest.raises(ScheduleError, match="a task, a task name or a signature"):
        app.add_periodic_task(10, 42)


def test_a_code_schedule_must_be_routable_before_the_beat_starts():
    app = App("t", settings=Settings())
    app.add_periodic_task(10, "proj.x", name="x", queue="nowhere")
    with pytest.raises(ScheduleError, match="schedule 'x'.*nowhere"):
        check_schedules(app)


def test_a_name_in_yaml_and_code_is_refused(minimal_yaml, tmp_path):
    config = tmp_path / "routing.yaml"
    config.write_text(minimal_yaml + "schedules:\n  dup: {task: projq.tasks.add, every: 1m}\n")
    app = App("t", config=config)
    app.add_periodic_task(10, "projq.tasks.add", name="dup")
    with pytest.raises(ScheduleError, match="'dup' is defined in .*routing.yaml:.* and again in code"):
        check_schedules(app)


def test_every_apply_async_option_is_either_accepted_or_refused_with_a_reason():
    apply_async = (set(CallOptions.__dataclass_fields__) - {"embed"}) | CANVAS_OPTIONS
    assert set(SCHEDULE_OPTION_NAMES) | set(REFUSED_OPTIONS) == apply_async
    assert not set(SCHEDULE_OPTION_NAMES) & set(REFUSED_OPTIONS)


@pytest.mark.parametrize("option", sorted(REFUSED_OPTIONS))
def test_check_says_why_a_schedule_cannot_take_an_apply_async_option(minimal_yaml, option):
    base = minimal_yaml.count("\n")
    text = minimal_yaml + f"""\
schedules:
  a:
    task: projq.tasks.add
    every: 1m
    options:
      {option}: x
"""
    result = check_text(text, environ={})
    assert [(line - base, msg) for line, msg, _ in problems(result)] == [
        (6, f"option {option!r} cannot be set on a schedule: {REFUSED_OPTIONS[option]}")]


def test_an_option_refused_on_purpose_gets_its_reason_and_no_did_you_mean(minimal_yaml):
    """Before: 'chain' was refused with its reason, then "did you mean 'exchange'?"."""
    def with_option(option: str) -> str:
        return minimal_yaml + f"schedules:\n  a: {{task: projq.tasks.add, every: 1m, options: {{{option}: x}}}}\n"

    for option in sorted(REFUSED_OPTIONS):
        [(_, message, hint)] = problems(check_text(with_option(option), environ={}))
        assert REFUSED_OPTIONS[option] in message and hint == "", option
    assert problems(check_text(with_option("exchang"), environ={}))[0][2] == "did you mean 'exchange'?"  # a typo


RESULTS_KEPT = """
schedules:
  kept:
    task: projq.tasks.add
    every: 10s
    options: {ignore_result: false, shadow: add-kept}
"""


def test_a_schedule_may_keep_its_results_in_a_backend_any_process_reads(minimal_yaml, tmp_path):
    config = tmp_path / "routing.yaml"
    config.write_text(minimal_yaml + "results: {backend: 'redis://127.0.0.1:6379/0'}\n" + RESULTS_KEPT)
    app = App("t", config=config)
    (entry,) = check_schedules(app)
    instant = dt.datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)
    _, _, wire = build_message(app, Run(entry, instant, scheduled_task_id("kept", instant), False), instant)
    # The worker stores the result under the run's id; no reply queue: the beat reads nothing.
    assert wire.headers["ignore_result"] is False and wire.reply_to is None
    assert wire.headers["shadow"] == "add-kept"


@pytest.mark.parametrize("results, where", [("results: {backend: 'rpc://'}\n", "the results backend is rpc://"),
                                            ("", "results are off")])
def test_keeping_results_without_a_backend_any_process_reads_refuses_to_start(minimal_yaml, tmp_path, results,
                                                                              where):
    config = tmp_path / "routing.yaml"
    config.write_text(minimal_yaml + results + RESULTS_KEPT)
    line = (minimal_yaml + results + RESULTS_KEPT).splitlines().index("  kept:") + 1
    with pytest.raises(ScheduleError) as raised:
        check_schedules(App("t", config=config))
    assert f"{config}:{line}: schedule 'kept': 'ignore_result: false'" in str(raised.value)
    assert "redis:// or db+postgresql://" in str(raised.value) and where in str(raised.value)


@pytest.mark.parametrize("results, where", [("results: {backend: 'rpc://'}\n", "the results backend is rpc://"),
                                            ("results: {backend: 'redis://h/0', enabled: false}\n",
                                             "results are off"),
                                            ("", "results are off")])
def test_check_warns_at_the_option_when_kept_results_would_be_read_by_no_one(minimal_yaml, tmp_path, results,
                                                                             where):
    """The rule `amqtask beat` refuses to start by, reported by `amqtask check` at the
    option's line (a warning: the app or --result-backend may name a backend). Before:
    check said the file was fine."""
    config = tmp_path / "routing.yaml"
    config.write_text(minimal_yaml + results + RESULTS_KEPT)
    line = config.read_text().splitlines().index("    options: {ignore_result: false, shadow: add-kept}") + 1
    checked = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert checked.exit_code == 0, checked.output
    assert (f"{config}:{line}:15: warning: schedule 'kept': 'ignore_result: false' keeps each run's result for any "
            f"process to read by its task id, which needs a redis:// or db+postgresql:// results backend; {where}"
            in checked.output)
    assert "amqtask beat refuses to start with it" in checked.output
    with pytest.raises(ScheduleError, match=where.replace("://", ".*")):  # the same rule, at start
        check_schedules(App("t", config=config))


def test_check_says_nothing_of_kept_results_with_a_backend_any_process_reads(minimal_yaml):
    text = minimal_yaml + "results: {backend: 'db+postgresql://u@h/db'}\n" + RESULTS_KEPT
    assert problems(check_text(text, environ={}), "warning") == []


# -- the message of a run -----------------------------------------------------------------

def test_a_run_is_a_routed_celery_message_with_its_deterministic_id(minimal_yaml, tmp_path):
    config = tmp_path / "routing.yaml"
    config.write_text(minimal_yaml + SCHEDULES)
    app = App("t", config=config)
    entries = {e.name: e for e in check_schedules(app)}
    instant = dt.datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)
    run = Run(entries["add-every-10s"], instant, scheduled_task_id("add-every-10s", instant), False)
    exchange, routing_key, wire = build_message(app, run, instant)
    assert (exchange, routing_key) == ("", "web_tasks")
    assert wire.headers["id"] == wire.correlation_id == run.task_id
    assert wire.headers["task"] == "projq.tasks.add"
    assert wire.headers[SCHEDULE_HEADER] == "add-every-10s"
    assert wire.headers[SCHEDULED_FOR_HEADER] == "2026-05-01T12:00:10Z"
    assert wire.headers["ignore_result"] is True and wire.reply_to is None
    assert wire.headers["eta"] is None and wire.priority == 5 and wire.headers["expires"] is not None
    assert b"[16, 16]" in wire.body or b"[16,16]" in wire.body


def test_jitter_is_a_fixed_share_per_run_and_becomes_an_eta(minimal_yaml, tmp_path):
    config = tmp_path / "routing.yaml"
    config.write_text(minimal_yaml + SCHEDULES)
    app = App("t", config=config)
    xmas = next(e for e in check_schedules(app) if e.name == "christmas")
    instant = xmas.schedule.when
    run = Run(xmas, instant, scheduled_task_id("christmas", instant), False)
    delay = jitter_delay(xmas, run.task_id)
    assert 0 <= delay <= 120 and delay == jitter_delay(xmas, run.task_id)
    assert len({jitter_delay(xmas, scheduled_task_id("christmas", instant + dt.timedelta(days=i)))
                for i in range(20)}) > 10
    _, _, wire = build_message(app, run, instant)
    expected = instant + dt.timedelta(seconds=delay)
    assert dt.datetime.fromisoformat(wire.headers["eta"]) == expected
    _, _, late = build_message(app, run, instant + dt.timedelta(hours=1))  # sent late: no eta in the past
    assert late.headers["eta"] is None


# -- commands refuse a broken schedule ---------------------------------------------------------

BROKEN = "schedules:\n  nightly:\n    task: projq.tasks.add\n    crontab: '0 3 * * 8'\n"


def test_check_names_the_broken_schedule_with_file_and_line(example_config, tmp_path):
    bad = tmp_path / "routing.yaml"
    bad.write_text(example_config.read_text().split("\nschedules:")[0] + "\n" + BROKEN)
    line = len(bad.read_text().splitlines())
    result = CliRunner().invoke(main, ["check", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:{line}:5: error: invalid day-of-week field '8' in '0 3 * * 8'" in result.output


def test_check_with_the_app_finds_a_misspelt_task(example_config, tmp_path):
    bad = tmp_path / "routing.yaml"
    bad.write_text(example_config.read_text().split("\nschedules:")[0] +
                   "\nschedules:\n  s: {task: projq.tasks.addd, every: 1m}\n")
    proc = subprocess.run([sys.executable, "-m", "amqtask.cli", "check", "-A", "examples.tasks", "--config", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "error: task 'projq.tasks.addd' is not registered by the app" in proc.stderr
    assert "did you mean 'projq.tasks.add'?" in proc.stderr


@pytest.mark.parametrize("with_app", [False, True])
def test_beat_refuses_to_start_with_exit_2(example_config, tmp_path, with_app):
    bad = tmp_path / "routing.yaml"
    bad.write_text(example_config.read_text().split("\nschedules:")[0] + "\n" + BROKEN)
    command = [sys.executable, "-m", "amqtask.cli", "beat", "--config", str(bad)]
    if with_app:
        command[4:4] = ["-A", "examples.tasks"]
    # An unreachable broker: refusing must come before any connection attempt.
    env = {"PATH": "/usr/bin:/bin", "AMQTASK_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:" in proc.stderr and "invalid day-of-week field '8'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_schedules_prints_next_runs_in_both_zones_without_a_broker(example_config, tmp_path):
    config = tmp_path / "routing.yaml"
    config.write_text(example_config.read_text().replace("${AMQTASK_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}",
                                                         "amqp://guest:guest@127.0.0.1:1//"))
    result = CliRunner().invoke(main, ["schedules", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "leader:   unknown (cannot connect to the broker" in result.output
    assert "add-every-10s: projq.tasks.add every 10s" in result.output
    assert "last run:  unknown" in result.output
    next_lines = [line for line in result.output.splitlines() if line.strip().endswith("Z)")]
    assert len(next_lines) >= 3 and all("(20" in line for line in next_lines)
