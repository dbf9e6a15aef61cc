"""The worker's side of remote control without a broker: which messages a node acts
on, node names, reply shapes, every command against a fake worker, modes, hostile
input, the revoked set and the runner. kombu and Celery are the reference where
they can be."""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st
from kombu import Exchange, Queue as KombuQueue
from kombu.pidbox import Mailbox

from amqtask.control import shapes
from amqtask.control.commands import COMMANDS, CONTROL, INSPECT, Context, allowed, handler_for, signal_number
from amqtask.control.matching import addressed_to
from amqtask.control.node import REPLY_EXCHANGE, ControlNode, queue_name
from amqtask.control.nodename import NodeNameError, expand, per_process
from amqtask.control.revoked import REVOKES_MAX, RevokedSet, valid_task_ids
from amqtask.control.view import (ControlRefused, PoolInfo, RequestInfo, TaskInfo, WorkerBusy, WorkerCounts,
                                  loop_runner)
from amqtask.events import EventDispatcher, EventFactory, HeartbeatSchedule, LamportClock
from amqtask.settings import BrokerSettings, Settings
from amqtask.brokerurl import parse_broker_urls
from amqtask.topology.loader import check_text

HOST = "w1@host"


# -- which messages a node acts on (kombu's Node.handle_message is the reference) ----------
def kombu_acts(hostname: str, body: dict) -> bool:
    node = Mailbox("celery", type="fanout").Node(hostname)
    node.dispatch = lambda **kwargs: True
    try:
        return node.handle_message(body, None) is True
    except Exception:  # kombu raises on an unknown matcher or a bad regex: the command is dropped
        return False


CASES = [
    {"destination": None},
    {"destination": []},
    {"destination": [HOST]},
    {"destination": ["w2@host"]},
    {"destination": ["w2@host", HOST]},
    {"destination": None, "pattern": "w1@*", "matcher": "glob"},
    {"destination": None, "pattern": "w2@*", "matcher": "glob"},
    {"destination": None, "pattern": "W1@*", "matcher": "glob"},
    {"destination": None, "pattern": "w[0-9]@host", "matcher": "glob"},
    {"destination": None, "pattern": r"w\d", "matcher": "pcre"},
    {"destination": None, "pattern": "host", "matcher": "pcre"},  # re.match: anchored at the start
    {"destination": None, "pattern": ".*host$", "matcher": "pcre"},
    {"destination": None, "pattern": "w1@*", "matcher": None},  # a pattern without matcher: everyone
    {"destination": None, "pattern": None, "matcher": "glob"},
    {"destination": None, "pattern": "(", "matcher": "pcre"},  # invalid regex: nobody
    {"destination": None, "pattern": "w1@*", "matcher": "soundex"},  # unknown matcher: nobody
    {"destination": ["w2@host"], "pattern": "w1@*", "matcher": "glob"},  # destination wins
]


@pytest.mark.parametrize("fields", CASES)
def test_addressing_matches_kombu(fields):
    assert addressed_to(HOST, fields.get("destination"), fields.get("pattern"), fields.get("matcher")) \
        == kombu_acts(HOST, {"method": "ping", **fields})


@settings(derandomize=True, max_examples=300)
@given(host=st.from_regex(r"[a-z]{1,3}[0-9]?@[a-z]{1,3}", fullmatch=True),
       destination=st.one_of(st.none(), st.lists(st.from_regex(r"[a-z]{1,3}[0-9]?@[a-z]{1,3}", fullmatch=True),
                                                 max_size=3)),
       pattern=st.one_of(st.none(), st.from_regex(r"[a-z*?@\[\]0-9.]{0,6}", fullmatch=True)),
       matcher=st.sampled_from([None, "glob", "pcre"]))
def test_addressing_matches_kombu_on_generated_messages(host, destination, pattern, matcher):
    body = {"method": "ping", "destination": destination, "pattern": pattern, "matcher": matcher}
    assert addressed_to(host, destination, pattern, matcher) == kombu_acts(host, body)


def test_a_string_destination_names_one_node_not_a_substring():
    # kombu would test `hostname in "w1@host-extra"`; a string names one node here
    assert addressed_to(HOST, "w1@host") is True
    assert addressed_to(HOST, "xw1@hostx") is False
    assert addressed_to(HOST, {"w1@host": 1}) is False


# -- node names (celery.utils.nodenames is the reference) ----------------------------------
@pytest.mark.parametrize("template", [None, "w1@%h", "%n@%h", "w1@%d", "w1", "%h", "w1@%%h", "x-%i@%h", "x%I@%h",
                                     "w1@%n.%d"])
def test_node_names_expand_as_celerys_do(template, monkeypatch):
    from celery.utils import nodenames

    monkeypatch.setattr(nodenames, "gethostname", lambda: "worker1.example.com")
    celery_name = nodenames.host_format(nodenames.default_nodename(template))
    assert expand(template, host="worker1.example.com", default_short="celery") == celery_name


def test_node_name_details():
    assert expand(None, host="vm") == "amqtask@vm"
    assert expand("w1", host="vm") == "amqtask@w1"
    assert expand("w%i@%h", host="vm", index=3) == "w3@vm"
    assert expand("w%I@%h", host="vm", index=3) == "w-3@vm"
    assert expand("w%i@%h", host="vm") == "w0@vm"
    assert expand("w-%p@%h", host="vm", pid=77) == "w-77@vm"
    with pytest.raises(NodeNameError, match="%x"):
        expand("w%x@%h", host="vm")
    with pytest.raises(NodeNameError):
        expand("w1@", host="vm")


def test_processes_get_distinct_names():
    assert per_process("w1@%h", 1) == "w1@%h"
    assert per_process("w1@%h", 3) == "w1%I@%h"
    assert per_process(None, 2) == "amqtask%I@%h"
    assert per_process("w%i@%h", 2) == "w%i@%h"
    names = {expand(per_process("w1@%h", 3), host="vm", index=i) for i in (1, 2, 3)}
    assert names == {"w1-1@vm", "w1-2@vm", "w1-3@vm"}


def test_control_queue_name():
    assert queue_name("w1@host") == "w1@host.celery.pidbox"


# -- reply shapes ---------------------------------------------------------------------------
def settings_for(yaml: str | None = None) -> Settings:
    text = yaml or """
exchanges:
  ex: {type: topic}
queues:
  q1:
    bindings:
      - {exchange: ex, routing_key: "a.#"}
      - {exchange: ex, routing_key: "b.*"}
    max_priority: 5
    message_ttl: 30s
routes:
  - {task: t.add, exchange: ex, routing_key: a.add}
defaults: {exchange: ex, routing_key: a.x}
"""
    result = check_text(text, "routing.yaml")
    assert result.settings is not None, result.problems
    return result.settings


def test_queue_dict_has_kombus_keys_and_our_bindings():
    ours = shapes.queue_dict(settings_for().topology, "q1")
    theirs = KombuQueue("q1", Exchange("ex", "topic"), "a.#").as_dict(recurse=True)
    assert set(ours) == set(theirs) and set(ours["exchange"]) == set(theirs["exchange"])
    assert ours["exchange"]["name"] == "ex" and ours["exchange"]["type"] == "topic"
    assert ours["routing_key"] == "a.#" and ours["max_priority"] == 5 and ours["message_ttl"] == 30.0
    assert ours["bindings"] == [{"exchange": "ex", "routing_key": "b.*", "arguments": None}]
    unknown = shapes.queue_dict(settings_for().topology, "elsewhere")
    assert unknown["exchange"]["name"] == "" and unknown["routing_key"] == "elsewhere"


def test_broker_info_has_kombus_keys_and_no_password():
    from kombu import Connection

    broker = BrokerSettings(urls=parse_broker_urls("amqp://app:s3cret@rabbit:5673/prod;amqp://app:s3cret@b2//"))
    ours = shapes.broker_info(broker)
    # Celery sends kombu's Connection.info() without its password
    assert set(ours) == set(Connection("amqp://guest:guest@localhost//").info()) - {"password"}
    assert ours["hostname"] == "rabbit" and ours["port"] == 5673 and ours["virtual_host"] == "prod"
    assert "s3cret" not in repr(ours) and ours["alternates"] == ["amqp://app:***@b2:5672/%2F"]


def test_request_info_has_celerys_shape():
    request = RequestInfo("id1", "t.add", (1, 2), {"k": b"x"}, argsrepr="(1, 2)", kwargsrepr="{'k': b'x'}",
                          time_start=5.0, exchange="ex", routing_key="a.add", priority=3, worker_pid=9)
    info = shapes.request_info(request, hostname=HOST, safe=True)
    assert set(info) == {"id", "name", "args", "kwargs", "type", "hostname", "time_start", "acknowledged",
                         "delivery_info", "worker_pid"}
    assert info["args"] == "(1, 2)" and info["delivery_info"] == {"exchange": "ex", "routing_key": "a.add",
                                                                  "priority": 3, "redelivered": False}
    unsafe = shapes.json_safe(shapes.request_info(request, hostname=HOST))
    assert unsafe["args"] == [1, 2] and unsafe["kwargs"] == {"k": "b'x'"}  # bytes as their repr


def test_registered_lines():
    assert shapes.registered_line(TaskInfo("t.add", rate_limit="10/m")) == "t.add [rate_limit=10/m]"
    assert shapes.registered_line(TaskInfo("t.add")) == "t.add"
    line = shapes.registered_line(TaskInfo("t.add", exchange="ex", routing_key="a.add"))
    assert line == "t.add [exchange=ex routing_key=a.add]"


def test_json_safe_never_raises():
    nested: list = []
    cursor = nested
    for _ in range(5000):
        cursor.append([])
        cursor = cursor[0]
    assert isinstance(shapes.json_safe(nested), str)
    assert shapes.json_safe({"x": float("nan"), "s": {1, 2}}) == {"x": "NaN", "s": "{1, 2}"}


# -- commands against a fake worker ---------------------------------------------------------
class FakeWorker:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.is_consuming = True

    def consuming(self): return self.is_consuming
    def counts(self): return WorkerCounts(active=1, processed=7)
    def totals(self): return {"t.add": 7}
    def pool(self): return PoolInfo("prefork", 4, [11, 12, 13, 14], max_tasks_per_child=100, time_limit=30)
    def prefetch_count(self): return 16
    def queues(self): return ["q1"]
    def registered(self): return [TaskInfo("t.slow"), TaskInfo("t.add", rate_limit="10/m")]
    def active(self): return [RequestInfo("a1", "t.add", (1, 2), argsrepr="(1, 2)", time_start=1.0, worker_pid=11)]
    def reserved(self): return [RequestInfo("r1", "t.add", (3, 4))]
    def scheduled(self): return []
    def config(self): return {"worker_concurrency": 4}

    def terminate(self, ids, signum):
        self.calls.append(("terminate", list(ids), signum))
        return [i for i in ids if i == "a1"]

    def set_rate_limit(self, task_name, rate):
        if task_name != "t.add":
            raise ControlRefused("unknown task")
        self.calls.append(("rate_limit", task_name, rate))

    def set_time_limit(self, task_name, soft, hard): self.calls.append(("time_limit", task_name, soft, hard))

    def add_consumer(self, queue, *, exchange, exchange_type, routing_key):
        self.calls.append(("add_consumer", queue, exchange, exchange_type, routing_key))

    def cancel_consumer(self, queue): self.calls.append(("cancel_consumer", queue))
    def shutdown(self): self.calls.append(("shutdown",))

    def pool_grow(self, n): raise ControlRefused("the prefork pool cannot grow at run time")
    def pool_shrink(self, n): self.calls.append(("pool_shrink", n))

    autoscaled: tuple[int, int] | None = None  # (max, min) of a worker started with --autoscale

    def autoscale(self, high, low):
        if self.autoscaled is None:
            raise ControlRefused("Autoscale not enabled")
        self.calls.append(("autoscale", high, low))
        self.autoscaled = (high or self.autoscaled[0], low or self.autoscaled[1])
        return self.autoscaled


def make_node(mode: str = "all", **kw) -> tuple[ControlNode, FakeWorker, list]:
    worker = FakeWorker()
    persisted: list = []
    clock = LamportClock()
    context = Context(hostname=HOST, view=worker, settings=settings_for(), revoked=RevokedSet(), clock=clock,
                      pid=1234, started=time.time() - 5,
                      events=EventDispatcher(EventFactory(hostname=HOST, clock=clock), task_events=False),
                      heartbeat=HeartbeatSchedule(2.0), persist_revoked=persisted.extend, **kw)
    return ControlNode(context, mode=mode), worker, persisted


def call(node: ControlNode, method: str, **arguments):
    body = {"method": method, "arguments": arguments, "destination": None, "pattern": None, "matcher": None,
            "ticket": "tk", "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": "client-oid"}}
    reply = node.handle(body, {"clock": 100})
    assert reply is not None and reply.exchange == REPLY_EXCHANGE and reply.routing_key == "client-oid"
    assert reply.headers["ticket"] == "tk" and reply.headers["clock"] > 100
    return reply.body[HOST]


def test_inspections_answer_in_celerys_shapes():
    node, _, _ = make_node()
    assert call(node, "ping") == {"ok": "pong"}
    health = call(node, "ping", health=True)
    assert health["consuming"] is True and health["queues"] == ["q1"] and health["active"] == 1
    stats = call(node, "stats")
    assert stats["total"] == {"t.add": 7} and stats["pid"] == 1234 and stats["prefetch_count"] == 16
    assert stats["uptime"] >= 5 and int(stats["clock"]) > 100
    assert stats["pool"] == {"implementation": "prefork", "max-concurrency": 4,
                             "processes": [11, 12, 13, 14], "max-tasks-per-child": 100,
                             "put-guarded-by-semaphore": False, "timeouts": [0, 30]}
    assert isinstance(stats["rusage"], dict) and stats["broker"]["hostname"] == "127.0.0.1"
    assert call(node, "registered") == ["t.add [rate_limit=10/m]", "t.slow"]
    assert call(node, "registered", taskinfoitems=["name"]) == ["t.add [name=t.add]", "t.slow [name=t.slow]"]
    active = call(node, "active", safe=True)
    assert [a["id"] for a in active] == ["a1"] and active[0]["args"] == "(1, 2)" and active[0]["hostname"] == HOST
    assert [r["id"] for r in call(node, "reserved")] == ["r1"]
    assert call(node, "scheduled") == [] and call(node, "revoked") == []
    assert [q["name"] for q in call(node, "active_queues")] == ["q1"]
    conf = call(node, "conf")
    assert conf["worker_concurrency"] == 4 and "***" in conf["broker_url"]
    assert call(node, "dump_active") == call(node, "active")  # Celery's old alias
    assert call(node, "clock")["clock"] >= 100
    found = call(node, "query_task", ids=["r1", "a1", "nope"])
    assert {k: v[0] for k, v in found.items()} == {"a1": "active", "r1": "reserved"}


def test_revoke_flags_persists_new_ids_once_and_terminates_running_ones():
    node, worker, persisted = make_node()
    assert call(node, "revoke", task_id="x1") == {"ok": "tasks x1 flagged as revoked"}
    assert call(node, "revoke", task_id=["x1", "x2"]) == {"ok": "tasks x1, x2 flagged as revoked"}
    assert persisted == ["x1", "x2"]  # each id recorded once
    assert node.context.revoked.ids() == ["x1", "x2"]
    node.context.events.enable_task_events()
    assert call(node, "revoke", task_id=["a1", "zz"], terminate=True, signal="KILL") == {"ok": "terminate: a1"}
    assert worker.calls[-1] == ("terminate", ["a1", "zz"], int(signal.SIGKILL))
    revoked_events = node.context.events.take(10)
    assert [(e["type"], e["uuid"], e["terminated"], e["signum"]) for e in revoked_events] == \
        [("task-revoked", "a1", True, int(signal.SIGKILL))]
    assert call(node, "revoke", task_id="b1", terminate=True) == {"ok": "terminate: tasks unknown"}
    assert call(node, "terminate", task_id=["a1"], signal="TERM") == {"ok": "terminate: a1"}  # Celery's `terminate`


def test_revoke_already_recorded_by_the_sender_is_not_recorded_again():
    node, _, persisted = make_node()
    assert "ok" in call(node, "revoke", task_id=["p1"], persisted=True)
    assert persisted == [] and "p1" in node.context.revoked


@pytest.mark.parametrize("task_id", [None, 5, "", ["", 3], "x" * 300, {"a": 1}])
def test_revoke_with_garbage_ids_is_refused(task_id):
    node, _, persisted = make_node()
    assert "error" in call(node, "revoke", task_id=task_id) and persisted == []


def test_actions():
    node, worker, _ = make_node()
    assert call(node, "rate_limit", task_name="t.add", rate_limit="5/s") == {"ok": "new rate limit set successfully"}
    assert call(node, "rate_limit", task_name="t.add", rate_limit=0) == {"ok": "rate limit disabled successfully"}
    assert call(node, "rate_limit", task_name="nope", rate_limit="5/s") == {"error": "unknown task"}
    assert "Invalid rate limit" in call(node, "rate_limit", task_name="t.add", rate_limit="fast")["error"]
    assert call(node, "time_limit", task_name="t.add", soft=1, hard=2.5) == {"ok": "time limits set successfully"}
    assert "error" in call(node, "time_limit", task_name="t.add", soft=-1)
    assert call(node, "add_consumer", queue="q2", exchange="ex") == {"ok": "add consumer q2"}
    assert call(node, "cancel_consumer", queue="q1") == {"ok": "no longer consuming from q1"}
    assert call(node, "pool_grow", n=2) == {"error": "the prefork pool cannot grow at run time"}
    assert call(node, "pool_shrink") == {"ok": "pool will shrink"}
    assert "error" in call(node, "pool_shrink", n="lots")
    assert call(node, "shutdown") == {"ok": "shutting down"}
    assert worker.calls == [("rate_limit", "t.add", "5/s"), ("rate_limit", "t.add", None),
                            ("time_limit", "t.add", 1.0, 2.5), ("add_consumer", "q2", "ex", None, None),
                            ("cancel_consumer", "q1"), ("pool_shrink", 1), ("shutdown",)]


def test_autoscale_changes_the_bounds_as_celerys_command_does():
    """Before: "No such control command: autoscale", though `--autoscale` works."""
    node, worker, _ = make_node()
    assert call(node, "autoscale", max=4, min=2) == {"error": "Autoscale not enabled"}  # Celery's words
    worker.autoscaled = (3, 1)
    assert call(node, "autoscale", max=6, min=2) == {"ok": "autoscale now max=6 min=2"}
    assert call(node, "autoscale", max=8) == {"ok": "autoscale now max=8 min=2"}  # min left as it was
    for garbage in ({"max": 0}, {"max": "many"}, {"max": 4, "min": -1}, {"max": True}, {"min": 10_001}):
        assert "error" in call(node, "autoscale", **garbage)
    assert worker.calls == [("autoscale", 6, 2), ("autoscale", 8, None)]


def test_events_switch_and_heartbeat():
    node, _, _ = make_node()
    assert call(node, "enable_events") == {"ok": "task events enabled"}
    assert call(node, "enable_events") == {"ok": "task events already enabled"}
    assert node.context.events.task_events
    assert call(node, "disable_events") == {"ok": "task events disabled"}
    node.context.heartbeat.due()
    assert node.context.heartbeat.due() is False
    assert call(node, "heartbeat") == {"ok": "heartbeat requested"}
    assert node.context.heartbeat.due() is True


def test_hello_merges_a_celery_workers_revoked_ids_and_returns_ours(caplog):
    node, _, persisted = make_node()
    caplog.set_level(logging.INFO, logger="amqtask.control")
    call(node, "revoke", task_id="ours")
    reply = call(node, "hello", from_node="celery@other", revoked={"theirs": 123.0})
    assert reply["revoked"] == ["ours", "theirs"] and isinstance(reply["clock"], int)
    assert persisted == ["ours", "theirs"]
    assert ("control command hello(from_node='celery@other', revoked={'theirs': 123.0}) from reply address "
            "reply.celery.pidbox/client-oid: merged 1 revoked id(s) from 'celery@other'") in caplog.text
    assert call(node, "hello", from_node="celery@other", revoked=["listed"])["revoked"][-1] == "listed"
    assert call(node, "hello", from_node=HOST) is None


@pytest.mark.parametrize("offered", ["a-string-is-not-a-list", 5, {"": 1, 7: 1}, ["x" * 300, None]])
def test_hello_merges_only_valid_ids(offered):
    node, _, persisted = make_node()
    assert call(node, "hello", from_node="celery@other", revoked=offered)["revoked"] == []
    assert persisted == [] and node.context.revoked.ids() == []


def test_hello_merges_at_most_a_full_set_keeping_the_newest():
    node, _, persisted = make_node()
    offered = [f"id-{n}" for n in range(REVOKES_MAX + 10)]
    reply = call(node, "hello", from_node="celery@other", revoked=offered)
    assert len(reply["revoked"]) == REVOKES_MAX and reply["revoked"][0] == "id-10"
    assert persisted == offered[10:]


def test_read_only_answers_hello_but_merges_and_records_nothing(caplog):
    node, _, persisted = make_node("read-only")
    node.context.revoked.add(["ours"])
    caplog.set_level(logging.INFO, logger="amqtask.control")
    reply = call(node, "hello", from_node="x@y", revoked={"evil-id": 0})
    assert reply["revoked"] == ["ours"] and isinstance(reply["clock"], int)  # Celery's mingle reply
    assert "evil-id" not in node.context.revoked and persisted == []
    assert ("control command hello(from_node='x@y', revoked={'evil-id': 0}) from reply address "
            "reply.celery.pidbox/client-oid: 1 revoked id(s) offered by 'x@y' not merged: worker.control is "
            "read-only") in caplog.text
    assert call(node, "hello", from_node="x@y", revoked=["evil-2"])["revoked"] == ["ours"]
    assert node.context.revoked.ids() == ["ours"] and persisted == []


def test_read_only_answers_inspections_and_refuses_changes(caplog):
    node, worker, _ = make_node("read-only")
    caplog.set_level(logging.INFO, logger="amqtask.control")
    assert call(node, "stats")["total"] == {"t.add": 7}
    assert call(node, "heartbeat") == {"ok": "heartbeat requested"}
    for method, args in (("revoke", {"task_id": "x"}), ("shutdown", {}), ("rate_limit", {"task_name": "t.add",
                         "rate_limit": "1/s"}), ("pool_grow", {}), ("autoscale", {"max": 2}), ("enable_events", {})):
        assert call(node, method, **args) == {"error": f"refused: worker.control is read-only on {HOST}"}
    assert worker.calls == [] and node.context.revoked.ids() == []
    assert "refused control command shutdown() from reply address reply.celery.pidbox/client-oid" in caplog.text


def test_every_state_change_is_logged_with_the_senders_address(caplog):
    node, _, _ = make_node()
    caplog.set_level(logging.INFO, logger="amqtask.control")
    call(node, "revoke", task_id="x9")
    node.handle({"method": "shutdown", "arguments": {}})  # no reply address at all
    assert "control command revoke(task_id='x9') from reply address reply.celery.pidbox/client-oid" in caplog.text
    assert "control command shutdown() from a sender without a reply address" in caplog.text


def test_modes_cover_every_command():
    for command in COMMANDS.values():
        assert allowed(command, "all") and not allowed(command, "off")
        assert allowed(command, "read-only") == (command.kind == INSPECT or command.name == "heartbeat"
                                                 or command.read_only is not None)
        assert handler_for(command, "all") is command.handler
    # only hello answers under read-only without doing what it does under all
    assert {c.name for c in COMMANDS.values() if c.read_only is not None} == {"hello"}
    assert handler_for(COMMANDS["hello"], "read-only") is not COMMANDS["hello"].handler
    assert {c.name for c in COMMANDS.values() if c.kind == CONTROL} >= {
        "revoke", "rate_limit", "time_limit", "add_consumer", "cancel_consumer", "shutdown", "enable_events",
        "disable_events", "pool_grow", "pool_shrink", "autoscale"}


@pytest.mark.parametrize("body", [None, "ping", [], {"method": 5}, {"arguments": {}},
                                  {"method": "ping", "destination": ["other@host"],
                                   "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": "k"}}])
def test_garbage_and_messages_for_others_get_no_reply(body):
    node, worker, _ = make_node()
    assert node.handle(body, None) is None and worker.calls == []


def test_replies_go_only_to_the_reply_exchange():
    node, worker, _ = make_node()
    body = {"method": "shutdown", "arguments": {}, "reply_to": {"exchange": "tasks", "routing_key": "queue"}}
    assert node.handle(body, {}) is None  # acted on (as kombu would) but nothing published elsewhere
    assert worker.calls == [("shutdown",)]


def test_unknown_commands_and_failing_handlers_answer_with_an_error():
    node, worker, _ = make_node()
    assert call(node, "objgraph") == {"error": "No such control command: objgraph"}
    worker.queues = lambda: 1 / 0
    assert call(node, "active_queues") == {"error": "ZeroDivisionError('division by zero')"}
    assert call(node, "active", safe="yes")[0]["id"] == "a1"  # arguments of odd types are tolerated


def test_signal_names():
    assert signal_number(None) == signal.SIGTERM
    assert signal_number("KILL") == signal_number("SIGKILL") == signal_number("kill") == signal_number("9") == 9
    for bad in ("NOPE", "999", 3.5, "SIG TERM"):
        with pytest.raises(ControlRefused):
            signal_number(bad)


# -- revoked set ----------------------------------------------------------------------------
def test_revoked_set_is_bounded_and_expires():
    now = [1000.0]
    revoked = RevokedSet(maxlen=3, expires=100, now=lambda: now[0])
    assert revoked.add(["a", "b"]) == ["a", "b"] and revoked.add(["b", "c"]) == ["c"]
    revoked.add(["d"])
    assert revoked.ids() == ["b", "c", "d"] and "a" not in revoked  # the oldest went
    now[0] = 1099.0
    assert "b" in revoked
    now[0] = 1101.0
    assert "b" not in revoked and revoked.ids() == []
    assert revoked.add(["old"], at=900.0) == [] and "old" not in revoked  # read back, already expired


def test_revocations_are_recorded_in_entries_the_reader_takes_whole():
    import json

    from amqtask.amqp.revoked import ENTRY_IDS_MAX, entries

    ids = [f"id-{n}" for n in range(2 * ENTRY_IDS_MAX + 1)]
    written = [json.loads(body) for body in entries(ids, by=HOST, at=5.0)]
    assert [len(e["ids"]) for e in written] == [ENTRY_IDS_MAX, ENTRY_IDS_MAX, 1]
    assert [i for e in written for i in e["ids"]] == ids
    assert {(e["at"], e["by"]) for e in written} == {(5.0, HOST)}
    assert entries([], by=HOST) == []


def test_reading_the_revoked_stream_is_retried_only_on_failures_that_pass():
    import aiormq.exceptions as ax
    from aiormq.connection import exception_by_code
    from pamqp import commands as spec

    from amqtask.amqp.revoked import transient

    def closed(code: int, text: str) -> Exception:
        return exception_by_code(spec.Connection.Close(reply_code=code, reply_text=text))

    # a stream still coming up, a fresh node's stream coordinator starting, a cluster
    # node whose replica is not running yet
    assert transient(closed(541, "INTERNAL_ERROR"))
    assert transient(ax.ChannelClosed(506, "Stream not found"))
    assert transient(closed(506, "RESOURCE_ERROR - Stream not found for queue 'r' in vhost '/'"))
    assert transient(ax.ChannelPreconditionFailed("stream does not have a replica on the local node"))
    # a queue of that name that is not a stream, a user without rights: final
    assert not transient(ax.ChannelPreconditionFailed("inequivalent arg 'x-queue-type'"))
    assert not transient(ax.ChannelAccessRefused("access refused"))
    assert not transient(closed(320, "CONNECTION_FORCED"))


def test_valid_task_ids():
    assert valid_task_ids("a") == ["a"]
    assert valid_task_ids(["a", 1, None, "", "b" * 256, "c"]) == ["a", "c"]
    assert valid_task_ids({"a": 1}) == [] and valid_task_ids(None) == []
    assert len(valid_task_ids(["x"] * 10, limit=4)) == 4


# -- the runner -----------------------------------------------------------------------------
def test_loop_runner_runs_calls_on_the_loop_and_gives_up_on_a_busy_one():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        run = loop_runner(loop, timeout=0.5)
        assert run(threading.get_ident) == thread.ident
        with pytest.raises(ZeroDivisionError):
            run(lambda: 1 / 0)
        loop.call_soon_threadsafe(time.sleep, 1.0)  # the loop is stuck
        with pytest.raises(WorkerBusy, match="did not answer within 0.5s"):
            run(lambda: 1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    with pytest.raises(WorkerBusy, match="not running"):
        loop_runner(loop)(lambda: 1)
