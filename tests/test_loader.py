"""routing.yaml validation: everything reported at once, each at file:line:column."""
import pytest

from amqtask.errors import ConfigError
from amqtask.topology.loader import check_file, check_text, load_settings, parse_duration_ms


def messages(result, severity="error"):
    return [(p.position.line, p.message) for p in result.problems if p.severity == severity]


def test_minimal_shape_is_accepted_exactly_as_written(minimal_yaml):
    result = check_text(minimal_yaml, environ={})
    assert result.problems == ()
    s = result.settings
    assert set(s.topology.exchanges) == {"tasks", "broadcast"}
    assert s.topology.exchanges["tasks"].type == "topic"
    assert s.topology.queues["web_tasks"].arguments["x-max-priority"] == 10
    assert s.defaults.exchange == "tasks" and s.defaults.routing_key == "task.default"
    assert s.broker.urls[0].vhost == "/" and s.broker.urls[0].host == "127.0.0.1"
    assert [r.pattern for r in s.routes] == ["projq.tasks.add", "projq.web.*", "projq.notify.*"]


def test_example_file_is_valid_without_warnings(example_config):
    result = check_file(example_config, environ={})
    assert result.problems == ()


def test_interpolation_uses_environment(minimal_yaml):
    s = check_text(minimal_yaml, environ={"AMQTASK_BROKER_URL": "amqp://u:p@rabbit:5673/prod"}).settings
    assert (s.broker.urls[0].host, s.broker.urls[0].port, s.broker.urls[0].vhost) == ("rabbit", 5673, "prod")
    typed = check_text("queues:\n  q:\n    max_priority: ${PRIO:-7}\n", environ={}).settings
    assert typed.topology.queues["q"].arguments["x-max-priority"] == 7


def test_unset_variable_without_default_is_an_error():
    result = check_text("broker:\n  url: ${NOPE_NOT_SET}\n", environ={})
    assert any("NOPE_NOT_SET" in m for _, m in messages(result))


def test_unknown_key_is_reported_at_its_line_with_suggestion(minimal_yaml):
    result = check_text(minimal_yaml + "  - task: x\n    routng_key: task.x\n", source="r.yaml", environ={})
    [problem] = result.errors
    assert problem.position.line == 29
    assert "routng_key" in problem.message and "routing_key" in problem.hint
    assert str(problem).startswith("r.yaml:29:5: error:")


def test_unknown_top_level_key(minimal_yaml):
    result = check_text(minimal_yaml + "quues: {}\n", environ={})
    assert [(l, m) for l, m in messages(result)] == [(28, "unknown key 'quues' in the top level")]
    assert "queues" in result.errors[0].hint


def test_yaml_syntax_error_has_position():
    result = check_text("queues:\n  q: {bindings: [\n", source="bad.yaml", environ={})
    assert result.settings is None
    [problem] = result.errors
    assert "YAML syntax error" in problem.message and problem.position.line >= 2


def test_every_problem_reported_in_one_run(minimal_yaml):
    text = minimal_yaml + (
        "  - task: projq.other\n    exchange: nowhere\n"
        "  - task: projq.lost\n    routing_key: zz.nowhere\n"
    )
    result = check_text(text, environ={})
    found = messages(result)
    assert (29, "route names undefined exchange 'nowhere'") in found
    assert any(line == 30 and "reaches no queue" in m for line, m in found)


def test_bindings_to_undefined_exchange_and_duplicates():
    text = (
        "exchanges:\n  tasks: {type: topic}\n"
        "queues:\n"
        "  a:\n    bindings:\n      - {exchange: taks, routing_key: 'a.#'}\n"
        "  a:\n    bindings: []\n"
    )
    result = check_text(text, environ={})
    found = messages(result)
    assert any("undefined exchange 'taks'" in m for _, m in found)
    assert any(line == 7 and "duplicate key 'a'" in m for line, m in found)
    assert any("did you mean 'tasks'" in p.hint for p in result.errors)


def test_wrong_types_are_named():
    result = check_text("exchanges:\n  t: {type: topic, durable: 'yes please'}\nqueues:\n  q: [1]\n", environ={})
    found = messages(result)
    assert (2, "'durable' must be true or false, not a string") in found
    assert (4, "queue 'q' must be a mapping, not a list") in found


def test_invalid_patterns_and_route_wildcards():
    text = (
        "exchanges:\n  t: {type: topic}\n"
        "queues:\n  q:\n    bindings:\n      - {exchange: t, routing_key: 'a.b#'}\n"
        "      - {exchange: t, routing_key: 'a.*'}\n"
        "routes:\n  - task: x\n    exchange: t\n    routing_key: 'a.*'\n"
        "  - task: 're:('\n    exchange: t\n"
    )
    found = messages(check_text(text, environ={}))
    assert any(line == 6 and "invalid topic pattern" in m for line, m in found)
    assert any(line == 11 and "contains a wildcard" in m for line, m in found)
    assert any(line == 12 and "invalid regular expression" in m for line, m in found)


@pytest.mark.parametrize("queue, fragment", [
    ("{queue_type: quorum, exclusive: true}", "quorum queue cannot be exclusive"),
    ("{queue_type: quorum, max_priority: 5}", "quorum queue cannot be a priority queue"),
    ("{queue_type: stream, dead_letter_exchange: dlx}", "stream queue cannot be dead-lettered"),
    ("{queue_type: stream, durable: false}", "stream queue cannot be non-durable"),
    ("{max_priority: 0}", "between 1 and 255"),
    ("{max_priority: 300}", "between 1 and 255"),
    ("{dead_letter_routing_key: x}", "needs 'dead_letter_exchange'"),
    ("{dead_letter_exchange: nowhere}", "dead-letter exchange 'nowhere' is not defined"),
    ("{queue_type: classic, overflow: drop-tail}", "'overflow' must be one of"),
    ("{message_ttl: soon}", "'message_ttl' must be milliseconds"),
])
def test_argument_combinations_rabbitmq_refuses(queue, fragment):
    text = f"exchanges:\n  dlx: {{type: direct}}\nqueues:\n  q: {queue}\n"
    found = messages(check_text(text, environ={}))
    assert any(fragment in m for _, m in found), found


def test_unreachable_queue_is_a_warning_not_an_error(minimal_yaml):
    result = check_text(minimal_yaml.replace("queues:\n", "queues:\n  orphan: {}\n"), environ={})
    assert result.settings is not None
    assert any("'orphan' has no bindings" in m for _, m in messages(result, "warning"))


def test_defaults_that_reach_nothing_are_an_error(minimal_yaml):
    result = check_text(minimal_yaml.replace("routing_key: task.default", "routing_key: nothing.here"), environ={})
    assert any("default destination" in m for _, m in messages(result))


def test_load_settings_raises_config_error_listing_all(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("exchanges:\n  x: {type: topc}\nworker: {pool: gevent}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert len(exc.value.problems) == 2
    assert "did you mean 'topic'" in str(exc.value)


def test_missing_file_is_one_clear_problem(tmp_path):
    result = check_file(tmp_path / "absent.yaml")
    assert result.settings is None and "cannot read" in result.errors[0].message


def test_worker_and_tasks_sections(example_config):
    s = load_settings(example_config)
    assert s.worker.concurrency is None and s.worker.pool == "threads" and s.worker.prefetch_multiplier == 4
    assert s.worker.processes == "auto"
    add = s.tasks["projq.tasks.add"]
    assert (add.rate_limit, add.time_limit, add.soft_time_limit, add.max_retries) == ("500/m", 30, 25, 3)


def test_worker_processes_defaults_to_auto_and_must_be_positive():
    assert check_text("{}", environ={}).settings.worker.processes == "auto"
    assert check_text("worker: {processes: auto}\n", environ={}).settings.worker.processes == "auto"
    assert check_text("worker: {processes: 3}\n", environ={}).settings.worker.processes == 3
    many = check_text("worker:\n  processes: many\n", environ={})
    assert many.errors[0].message == "'processes' must be a whole number or 'auto', not 'many'"
    result = check_text("worker:\n  processes: 0\n", environ={})
    assert result.settings is None
    assert result.errors[0].message == "'processes' must be greater than 0, not 0" and result.errors[0].position.line == 2


def test_durations():
    assert parse_duration_ms(1500) == 1500
    assert parse_duration_ms("30s") == 30_000
    assert parse_duration_ms("1d") == 86_400_000
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("soon") is None
    assert parse_duration_ms(True) is None


def test_recursive_alias_is_an_error_not_a_crash():
    result = check_text("a: &a [*a]\n", environ={})
    assert result.settings is None and "refers to itself" in result.errors[0].message


def test_alias_bomb_is_refused_quickly():
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    result = check_text("\n".join(lines) + "\n", environ={})
    assert result.settings is None and "more than 100000 values" in result.errors[0].message


def test_unknown_yaml_tags_are_errors():
    result = check_text("queues:\n  q: {bindings: [], !weird_tag: 1}\n  r: !!int nope\n", environ={})
    messages = [p.message for p in result.errors]
    assert any("invalid YAML value" in m for m in messages)


@pytest.mark.parametrize("text", ["", "NULL", "~\n", "# only a comment\n"])
def test_empty_documents_mean_all_defaults(text):
    result = check_text(text, environ={})
    assert result.settings is not None and result.problems == ()


# Found by the property tests (tests/test_loader_fuzz.py, integration/test_chaos_config.py):
# each was a crash and is now a problem at its line.
def test_worker_queue_lists_of_non_names_are_errors_not_crashes():
    result = check_text("worker: {queues: [[]]}\n", source="r.yaml", environ={})
    assert result.settings is None
    assert messages(result) == [(1, "worker queues entries must be queue names, not a list")]
    result = check_text("queues: {q: {}}\nworker: {exclude_queues: [{a: 1}, q]}\n", environ={})
    assert messages(result) == [(2, "worker exclude_queues entries must be queue names, not a mapping")]


def test_a_classic_queue_in_a_cluster_configuration_is_a_warning(minimal_yaml):
    cluster = "amqp://guest:guest@10.0.0.1:5672//;amqp://guest:guest@10.0.0.2:5672//"
    text = minimal_yaml.replace("  default:\n    bindings:", "  default:\n    queue_type: quorum\n    bindings:")
    result = check_text(text, environ={"AMQTASK_BROKER_URL": cluster})
    warned = [m for _, m in messages(result, "warning") if "lives on one node" in m]
    assert any("'web_tasks'" in m for m in warned) and any("'audit'" in m for m in warned), warned
    assert not any("'default'" in m for m in warned)
    single = check_text(text, environ={"AMQTASK_BROKER_URL": "amqp://guest:guest@10.0.0.1:5672//"})
    assert not [m for _, m in messages(single, "warning") if "lives on one node" in m]


def test_a_queue_name_too_long_to_be_parked_is_reported_at_its_line():
    """The worker parks countdowns, etas, retries and rate-limited tasks under a routing
    key that ends with the queue's name: past 255 bytes, AMQP cannot carry it."""
    long_name = "q." * 50 + "x"  # 101 bytes, 201 once its dots are encoded in the key
    result = check_text(f"queues:\n  fine: {{}}\n  {long_name}: {{}}\n", source="r.yaml", environ={})
    [(line, message)] = [m for m in messages(result, "warning") if "parked" in m[1]]
    assert line == 3 and "265 bytes" in message and "255" in message
