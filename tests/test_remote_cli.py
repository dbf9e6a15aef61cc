"""`amqtask control heartbeat`, `amqtask inspect clock` and `amqtask inspect
query_task` without a broker: what each sends, and how the replies are shown
(table, --json, -d, --timeout, exit status), with the broadcast replaced by a fake."""
from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from amqtask.cli import main


class FakeBroadcast:
    """Stands in for `broadcast`: records each call and answers with `replies`."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.calls: list[dict[str, Any]] = []

    def __call__(self, config_path: str | None, method: str, arguments: dict[str, Any] | None = None, *,
                 destination: str | None, timeout: float, before: Any = None) -> dict[str, Any]:
        self.calls.append({"method": method, "arguments": arguments, "destination": destination,
                           "timeout": timeout})
        return self.replies


@pytest.fixture
def answer(monkeypatch):
    def install(replies: dict[str, Any]) -> FakeBroadcast:
        fake = FakeBroadcast(replies)
        monkeypatch.setattr("amqtask.cli.control.broadcast", fake)
        monkeypatch.setattr("amqtask.cli.inspect.broadcast", fake)
        return fake

    return install


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_control_heartbeat_asks_for_a_heartbeat_event(answer):
    fake = answer({"w1@h": {"ok": "heartbeat requested"}, "celery@h": None})
    result = run("control", "heartbeat", "-d", "w1@h,celery@h", "--timeout", "2.5")
    assert result.exit_code == 0, result.output
    assert fake.calls == [{"method": "heartbeat", "arguments": {}, "destination": "w1@h,celery@h", "timeout": 2.5}]
    # a Celery worker answers heartbeat with nothing at all
    assert result.output.splitlines() == ["celery@h: done", "w1@h: heartbeat requested"]
    as_json = run("control", "heartbeat", "--json")
    assert json.loads(as_json.output) == {"w1@h": {"ok": "heartbeat requested"}, "celery@h": None}


def test_control_heartbeat_refused_or_unanswered_exits_1(answer):
    answer({"w1@h": {"error": "refused: worker.control is off"}})
    refused = run("control", "heartbeat")
    assert refused.exit_code == 1 and "w1@h: error: refused: worker.control is off" in refused.output
    answer({})
    nobody = run("control", "heartbeat", "--timeout", "0.5")
    assert nobody.exit_code == 1 and "no worker answered within 0.5s" in nobody.output


def test_inspect_clock_shows_each_workers_clock(answer):
    fake = answer({"w2@h": {"clock": 41}, "w1@h": {"clock": 7}})
    result = run("inspect", "clock", "-d", "w1@h")
    assert result.exit_code == 0, result.output
    assert fake.calls[0]["method"] == "clock" and fake.calls[0]["destination"] == "w1@h"
    assert [line.split() for line in result.output.splitlines()] == [["WORKER", "CLOCK"], ["w1@h", "7"],
                                                                     ["w2@h", "41"]]
    assert json.loads(run("inspect", "clock", "--json").output) == {"w2@h": {"clock": 41}, "w1@h": {"clock": 7}}


def test_inspect_query_task_sends_the_ids_and_lists_where_they_are(answer):
    request = {"id": "a1", "name": "m.block", "args": ["/tmp/x"], "worker_pid": 42}
    fake = answer({"w1@h": {"a1": ["active", request], "r1": ["reserved", {"id": "r1", "name": "m.add",
                                                                           "args": [1, 2]}]},
                   "w2@h": {}})
    result = run("inspect", "query_task", "a1", "r1", "gone", "--timeout", "3")
    assert result.exit_code == 0, result.output
    assert fake.calls == [{"method": "query_task", "arguments": {"ids": ["a1", "r1", "gone"]}, "destination": None,
                           "timeout": 3.0}]
    rows = [line.split() for line in result.output.splitlines()]
    assert rows == [["WORKER", "ID", "STATE", "TASK", "ARGS", "PID"],
                    ["w1@h", "a1", "active", "m.block", '["/tmp/x"]', "42"],
                    ["w1@h", "r1", "reserved", "m.add", "[1,", "2]", "-"]]
    assert json.loads(run("inspect", "query-task", "a1", "--json").output)["w1@h"]["a1"][0] == "active"


def test_inspect_query_task_needs_an_id_and_reports_errors(answer):
    assert run("inspect", "query_task").exit_code == 2
    answer({"w1@h": {"error": "the worker did not answer within 0.8s"}})
    busy = run("inspect", "query_task", "a1")
    assert busy.exit_code == 1
    assert busy.output.splitlines()[1].split() == ["w1@h", "error:", "the", "worker", "did", "not", "answer",
                                                   "within", "0.8s"]


def test_the_new_commands_are_listed():
    assert "heartbeat" in run("control", "--help").output
    listing = run("inspect", "--help").output
    assert "clock" in listing and "query_task" in listing
