"""The metrics recording API against prometheus-client's own registry (no HTTP);
the monitoring keys of routing.yaml; the CLI's argument handling."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from amqtask.cli import main
from amqtask.metrics import Metrics, NullMetrics, dead_letter_kind
from amqtask.settings import MonitorSettings
from amqtask.topology.loader import check_text


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_recording_api_counts_what_it_is_told():
    m = Metrics()
    for _ in range(3):
        m.task_received("t.add")
        m.task_started("t.add")
        m.task_finished("t.add", "succeeded", 0.02)
    m.task_finished("t.fail", "failed", 1.5)
    m.task_finished("t.add", "revoked")
    m.acks_sent(5, frames=2)
    m.dead_lettered("undecodable: not JSON")
    m.dead_lettered("unknown task 'x.y'")
    m.dead_lettered("ValueError: boom")
    m.set_in_flight(4)
    m.set_prefetch_window(16)
    m.reconnected()
    m.publish_confirmed(3)
    m.publish_nacked()
    m.pool_child_replaced()
    m.events_dropped("buffer_full", 7)
    assert value(m, "amqtask_tasks_total", task="t.add", state="succeeded") == 3
    assert value(m, "amqtask_tasks_total", task="t.add", state="received") == 3
    assert value(m, "amqtask_tasks_total", task="t.add", state="revoked") == 1
    assert value(m, "amqtask_tasks_total", task="t.fail", state="failed") == 1
    assert value(m, "amqtask_task_runtime_seconds_count", task="t.add") == 3
    assert value(m, "amqtask_task_runtime_seconds_bucket", task="t.fail", le="1.0") == 0
    assert value(m, "amqtask_task_runtime_seconds_bucket", task="t.fail", le="2.5") == 1
    assert value(m, "amqtask_acks_total") == 5 and value(m, "amqtask_ack_frames_total") == 2
    assert value(m, "amqtask_dead_letters_total", reason="undecodable") == 1
    assert value(m, "amqtask_dead_letters_total", reason="unknown_task") == 1
    assert value(m, "amqtask_dead_letters_total", reason="failed") == 1
    assert value(m, "amqtask_tasks_in_flight") == 4 and value(m, "amqtask_prefetch_window") == 16
    assert value(m, "amqtask_reconnects_total") == 1 and value(m, "amqtask_publish_confirms_total") == 3
    assert value(m, "amqtask_publish_nacks_total") == 1 and value(m, "amqtask_pool_children_replaced_total") == 1
    assert value(m, "amqtask_events_dropped_total", reason="buffer_full") == 7


def test_unknown_task_states_are_refused():
    with pytest.raises(ValueError, match="unknown task state"):
        Metrics().task_finished("t", "exploded")


def test_two_metrics_objects_do_not_collide():
    a, b = Metrics(), Metrics()  # each has its own registry: no "duplicated timeseries"
    a.task_received("t")
    assert value(b, "amqtask_tasks_total", task="t", state="received") is None


def test_null_metrics_accept_every_call():
    m = NullMetrics()
    m.task_received("t")
    m.task_finished("t", "succeeded", 1.0)
    m.acks_sent(3)
    m.dead_lettered("x")


@pytest.mark.parametrize("reason, kind", [
    ("undecodable: Expecting value", "undecodable"), ("content type 'application/x-python-serialize' is not "
                                                      "accepted", "content_type"),
    ("unknown task 'no.such'", "unknown_task"), ("canvas: chords are not supported", "canvas"),
    ("missing or invalid 'task' header", "bad_header"), ("ValueError: boom", "failed"),
    ("message too large", "too_large"),
])
def test_dead_letter_reasons_have_bounded_labels(reason, kind):
    assert dead_letter_kind(reason) == kind


# -- routing.yaml ---------------------------------------------------------------------------
def test_monitoring_keys_default_and_parse():
    assert check_text("queues: {q: {}}", "r.yaml").settings.worker.monitor == MonitorSettings()
    text = """queues: {q: {}}
worker: {events: true, heartbeat_interval: 5, control: off, metrics_port: 9808, revoked_stream: null}
"""
    monitor = check_text(text, "r.yaml").settings.worker.monitor
    assert monitor == MonitorSettings(events=True, heartbeat_interval=5.0, control="off", metrics_port=9808,
                                      revoked_stream=None)


@pytest.mark.parametrize("line, message", [
    ("control: readonly", "'control' must be one of all, read-only, off"),
    ("metrics_port: 70000", "'metrics_port' must be a TCP port"),
    ("metrics_port: 0", "'metrics_port' must be greater than 0"),
    ("heartbeat_interval: -1", "'heartbeat_interval' must be 0 or more"),
    ("events: maybe", "'events' must be true or false"),
    ("revoked_stream: ''", "'revoked_stream' must be a queue name"),
])
def test_monitoring_keys_are_checked(line, message):
    result = check_text(f"queues: {{q: {{}}}}\nworker:\n  {line}\n", "r.yaml")
    assert result.settings is None and any(message in p.message for p in result.problems)


# -- the CLI --------------------------------------------------------------------------------
def test_cli_lists_the_commands_and_accepts_dashes():
    runner = CliRunner()
    listing = runner.invoke(main, ["control", "--help"]).output
    for name in ("revoke", "rate_limit", "time_limit", "add_consumer", "cancel_consumer", "shutdown",
                 "enable_events", "disable_events", "pool_grow", "pool_shrink"):
        assert name in listing
    inspect = runner.invoke(main, ["inspect", "--help"]).output
    for name in ("ping", "stats", "registered", "active", "reserved", "scheduled", "revoked", "active_queues",
                 "conf"):
        assert name in inspect
    assert "Set a task type's rate limit" in runner.invoke(main, ["control", "rate-limit", "--help"]).output


def test_cli_usage_errors_exit_2():
    runner = CliRunner()
    assert runner.invoke(main, ["control", "revoke"]).exit_code == 2
    assert runner.invoke(main, ["control", "pool_grow", "0"]).exit_code == 2
    result = runner.invoke(main, ["events", "--json"])
    assert result.exit_code == 2 and "--json goes with --dump" in result.output


def test_worker_monitoring_flags_override_routing_yaml():
    import click

    from amqtask.cli.control import monitor_options, monitor_settings

    seen = {}

    @click.command()
    @monitor_options
    def worker(**flags):
        seen.update(flags)

    base = MonitorSettings(events=False, heartbeat_interval=2.0, control="read-only", metrics_port=None)
    assert CliRunner().invoke(worker, ["-E", "--metrics-port", "9808"]).exit_code == 0
    assert monitor_settings(base, **seen) == MonitorSettings(events=True, heartbeat_interval=2.0,
                                                             control="read-only", metrics_port=9808)
    assert CliRunner().invoke(worker, []).exit_code == 0
    assert monitor_settings(base, **seen) == base
    on = MonitorSettings(events=True)
    assert monitor_settings(on, **seen) == on  # no -E keeps routing.yaml's events: true
    assert CliRunner().invoke(worker, ["--control", "sometimes"]).exit_code == 2


def test_multiprocess_metrics_refuse_to_start_after_prometheus_client_was_imported():
    import subprocess
    import sys

    code = ("import prometheus_client\nfrom amqtask.metrics import prepare_multiprocess\n"
            "try:\n    prepare_multiprocess()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("MetricsUnavailable prometheus_client was imported before multiprocess metrics")
