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
