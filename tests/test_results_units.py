"""Result documents, backend selection, the rpc store and the reply queue's bounds,
checked without services. Celery's own in-memory result backend (`cache+memory://`,
a key-value backend like Redis) is the reference for the document format."""
from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import uuid

import pytest
from celery import Celery

from amqtask.errors import PublishError, UnroutableError
from amqtask.results import (
    FAILURE,
    SUCCESS,
    BackendUnavailable,
    ChordPart,
    ChordReady,
    ResultMeta,
    exception_from_payload,
    exception_payload,
    open_backend,
)
from amqtask.results.base import group_tuple, ids_from_group_tuple, json_bytes, json_value
from amqtask.results.rpc import RpcStore
from amqtask.settings import BrokerSettings, ResultSettings
from amqtask.topology.loader import check_text


@pytest.fixture
def celery_kv():
    app = Celery("ref", backend="cache+memory://", broker="memory://")
    app.conf.result_extended = True
    yield app.backend
    app.close()


def test_a_success_document_has_celerys_keys_in_celerys_order(celery_kv):
    celery_kv.store_result("t-1", 5, "SUCCESS")
    reference = json.loads(celery_kv.get(celery_kv.get_key_for_task("t-1")))
    ours = ResultMeta("t-1", SUCCESS, 5).document()
    assert list(ours) == [k for k in reference if k not in ("name", "args", "kwargs", "worker", "retries", "queue")]
    assert ours["status"] == reference["status"] == "SUCCESS" and ours["result"] == reference["result"] == 5
    assert ours["children"] == [] and reference["children"] in (None, [])  # [] from a worker, None outside one


def test_celery_decodes_an_amqtask_failure_document_into_the_exception(celery_kv):
    meta = ResultMeta("t-2", FAILURE, exception_payload(ValueError("boom")), traceback="Traceback ...",
                      name="t.fail", args=(1,), kwargs={"k": 2}, worker="w1", retries=0, queue="q")
    celery_kv.set(celery_kv.get_key_for_task("t-2"), json_bytes(meta.document(extended=True)))
    decoded = celery_kv.get_task_meta("t-2")
    assert decoded["status"] == "FAILURE" and isinstance(decoded["result"], ValueError)
    assert decoded["result"].args == ("boom",) and decoded["traceback"] == "Traceback ..."
    assert decoded["name"] == "t.fail" and decoded["args"] == [1] and decoded["kwargs"] == {"k": 2}
    assert decoded["worker"] == "w1" and decoded["queue"] == "q"


class Outer:
    class NestedError(Exception):
        """Celery names it by its qualified name, Outer.NestedError."""


def test_an_exception_payload_is_the_one_celery_prepares_and_decodes(celery_kv):
    when = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
    exc = Outer.NestedError("boom", 3, [1, {"a": when}], object())
    prepared = celery_kv.prepare_exception(exc, "json")
    assert exception_payload(exc) == {**prepared, "exc_message": list(prepared["exc_message"])}
    decoded = celery_kv.exception_to_python(exception_payload(exc))
    assert type(decoded) is Outer.NestedError and decoded.args[:3] == ("boom", 3, [1, {"a": when}])
    rebuilt = exception_from_payload({**exception_payload(exc), "exc_module": "not.imported.here"})
    assert type(rebuilt).__name__ == "NestedError" and type(rebuilt).__qualname__ == "Outer.NestedError"


def test_a_datetime_result_comes_back_as_a_datetime_either_way(celery_kv):
    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    value = {"at": when, "day": when.date(), "id": uuid.UUID(int=7), "price": decimal.Decimal("9.99"), "raw": b"\xff"}
    celery_kv.store_result("t-by-celery", value, SUCCESS)  # what a Celery worker stores
    assert json_value(celery_kv.get(celery_kv.get_key_for_task("t-by-celery")))["result"] == value
    stored = json_bytes(ResultMeta("t-by-amqtask", SUCCESS, value).document())  # what an amqtask worker stores
    celery_kv.set(celery_kv.get_key_for_task("t-by-amqtask"), stored)
    assert celery_kv.get_task_meta("t-by-amqtask")["result"] == value


def test_extended_fields_only_when_asked():
    meta = ResultMeta("t", SUCCESS, 1, name="n", args=(1,), kwargs={}, worker="w", retries=2, queue="q")
    assert "name" not in meta.document()
    assert meta.document(extended=True)["retries"] == 2


def test_date_done_is_set_for_ready_states_only():
    assert ResultMeta("t", SUCCESS).document()["date_done"] is not None
    assert ResultMeta("t", "STARTED").document()["date_done"] is None
    fixed = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert ResultMeta("t", SUCCESS, date_done=fixed).document()["date_done"] == "2024-01-02T03:04:05+00:00"


def test_group_tuple_is_celerys_group_result_tuple():
    from celery.result import GroupResult, result_from_tuple

    app = Celery("ref", backend="cache+memory://", broker="memory://")
    restored = result_from_tuple(json.loads(json_bytes(group_tuple("g1", ["a", "b"]))), app)
    assert isinstance(restored, GroupResult) and restored.id == "g1"
    assert [r.id for r in restored.results] == ["a", "b"]
    assert ids_from_group_tuple(GroupResult("g2", [app.AsyncResult("x")]).as_tuple()) == ["x"]
    app.close()


def test_a_chord_whose_part_failed_gives_the_body_celerys_chord_error():
    ready = ChordReady("g", (ChordPart("a", SUCCESS, 1), ChordPart("b", FAILURE, exception_payload(ValueError("no")))),
                       token="b")
    assert ready.values()[0] == 1 and ready.failed_part.task_id == "b"
    assert ready.error_payload() == {"exc_type": "ChordError", "exc_message": ["Dependency b raised ValueError('no')"],
                                     "exc_module": "celery.exceptions"}
    assert ChordReady("g", (ChordPart("a", SUCCESS, 1),), token="a").error_payload() is None


# -- configuration -------------------------------------------------------------------
def settings_of(text: str):
    result = check_text(text, environ={})
    return result


def test_results_are_off_by_default_and_enabled_means_rpc():
    assert settings_of("{}").settings.results.url is None
    assert settings_of("results: {enabled: true}").settings.results.url == "rpc://"
    assert settings_of("results: {backend: 'redis://h:6379/1', enabled: false}").settings.results.url is None
    assert settings_of("results: {backend: 'redis://h:6379/1'}").settings.results.url == "redis://h:6379/1"


def test_an_unknown_backend_is_an_error_at_its_line_without_the_password():
    result = settings_of("results:\n  backend: mysql://me:secret@h/db\n")
    [error] = result.errors
    assert error.position.line == 2 and "unknown result backend" in error.message and "secret" not in str(error)


def test_table_names_are_checked():
    result = settings_of("results:\n  backend: db+postgresql://u@h/d\n  table_names: {task: 'x; drop', group: ok}\n")
    assert any("table name" in e.message for e in result.errors)
    ok = settings_of("results:\n  backend: db+postgresql://u@h/d\n  table_names: {task: my_tasks}\n").settings
    assert dict(ok.results.table_names) == {"task": "my_tasks"}


def test_backends_are_chosen_by_scheme_without_connecting():
    broker = BrokerSettings()
    assert open_backend(ResultSettings(), broker) is None
    assert type(open_backend(ResultSettings(backend="rpc://"), broker)).__name__ == "RpcBackend"
    assert type(open_backend(ResultSettings(backend="redis://127.0.0.1:1/0"), broker)).__name__ == "RedisBackend"
    pg = open_backend(ResultSettings(backend="db+postgresql+psycopg://u:pw@127.0.0.1:1/db"), broker)
    assert type(pg).__name__ == "PostgresBackend" and pg.conninfo == "postgresql://u:pw@127.0.0.1:1/db"
    assert "pw" not in pg.url


def test_app_result_backend_overrides_routing_yaml():
    from amqtask import App

    app = App("t", settings=settings_of("{}").settings, result_backend="redis://127.0.0.1:1/0")
    assert app.backend.url == "redis://127.0.0.1:1/0"
    with pytest.raises(Exception) as exc:
        App("t", settings=settings_of("{}").settings, result_backend="nope://x")
    assert "unknown result backend" in str(exc.value)


# -- the rpc store (the worker's side) -------------------------------------------------
class Published:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list = []
        self.error = error

    async def __call__(self, exchange, routing_key, wire) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((exchange, routing_key, wire))


def test_rpc_store_publishes_celerys_rpc_message_to_reply_to():
    publish = Published()
    store = RpcStore(publish)
    asyncio.run(store.store(ResultMeta("t-9", SUCCESS, {"x": 1}, reply_to="amqtask.reply.abc")))
    [(exchange, key, wire)] = publish.calls
    assert (exchange, key, wire.correlation_id, wire.delivery_mode) == ("", "amqtask.reply.abc", "t-9", 2)
    body = json.loads(wire.body)
    assert body["task_id"] == "t-9" and body["status"] == "SUCCESS" and body["result"] == {"x": 1}
    assert set(body) == {"task_id", "status", "result", "traceback", "children", "date_done"}


def test_rpc_store_without_reply_to_stores_nothing_and_a_gone_client_is_not_an_error():
    publish = Published()
    asyncio.run(RpcStore(publish).store(ResultMeta("t", SUCCESS, 1)))
    assert publish.calls == []
    asyncio.run(RpcStore(Published(UnroutableError("", "amqtask.reply.gone"))).store(
        ResultMeta("t", SUCCESS, 1, reply_to="amqtask.reply.gone")))


def test_rpc_store_raises_backend_unavailable_when_the_publish_fails():
    store = RpcStore(Published(PublishError("publish not confirmed within 5s")))
    with pytest.raises(BackendUnavailable):
        asyncio.run(store.store(ResultMeta("t", SUCCESS, 1, reply_to="q")))


def test_rpc_cannot_count_chords():
    from amqtask.results import ChordsUnsupported

    with pytest.raises(ChordsUnsupported, match="chords need a result backend"):
        asyncio.run(RpcStore(Published()).chord_part_return("g", "t", 0, SUCCESS, 1, 2))


def test_the_rpc_client_remembers_a_bounded_number_of_tasks():
    from amqtask.amqp.replies import ReplyQueue

    queue = ReplyQueue(BrokerSettings(), expires_ms=1000, max_pending=3, accept=("json",))
    for i in range(10):
        assert queue.expect(f"t{i}") == queue.name
    assert [queue.knows(f"t{i}") for i in range(10)] == [False] * 7 + [True] * 3
    queue.forget("t9")
    assert not queue.knows("t9")


def test_optional_backends_are_imported_only_when_used():
    import subprocess
    import sys

    code = ("import sys, amqtask, amqtask.results, amqtask.canvas, amqtask.cli\n"
            "print(sorted(m for m in ('redis', 'psycopg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
