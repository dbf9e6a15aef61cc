"""db+postgresql:// against the real PostgreSQL and a real Celery 5: Celery's tables
read both ways and from other processes; expiry by `amqtask results cleanup`; an
outage; chords counted once. Every test uses its own table names and drops them."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from celery import Celery
from psycopg import sql

from amqtask import App
from amqtask.canvas import chord, group
from amqtask.results import (
    FAILURE,
    SUCCESS,
    AsyncResult,
    BackendUnavailable,
    GroupResult,
    ResultMeta,
    exception_payload,
)
from amqtask.results.postgres import PostgresBackend, conninfo

from .conftest import ROOT, WorkerHarness
from .results_services import (
    POSTGRES_URL,
    config_with_backend,
    in_a_child,
    postgres_problem,
    read_in_another_process,
    require,
    start_celery_worker,
    stop,
)


@pytest.fixture(scope="module")
def pg_url():
    require("PostgreSQL", postgres_problem())
    return POSTGRES_URL


@pytest.fixture
def tables(prefix, pg_url):
    names = {"task": f"{prefix}_taskmeta", "group": f"{prefix}_tasksetmeta"}
    yield names
    with psycopg.connect(conninfo(pg_url), autocommit=True) as conn:
        for table in (names["task"], names["group"], f"{names['task']}_chord", f"{names['task']}_chord_part"):
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


@pytest.fixture
def app(tmp_path, prefix, pg_url, tables, broker_url, amqp):
    extra = f"  table_names: {{task: {tables['task']}, group: {tables['group']}}}\n"
    config = config_with_backend(tmp_path, prefix, pg_url, extra)
    application = App("pg-results", config=config)
    application.config_path = config  # type: ignore[attr-defined]
    amqp.track("queue", f"{prefix}.work")
    amqp.track("queue", f"{prefix}.other")
    amqp.track("exchange", f"{prefix}.x")
    yield application
    application.close()


def celery_url(pg_url: str) -> str:
    return pg_url.replace("db+postgresql://", "db+postgresql+psycopg://", 1)


def celery_reader(pg_url: str, tables: dict) -> Celery:
    client = Celery("reader", broker="memory://", backend=celery_url(pg_url))
    client.conf.update(result_extended=True, database_table_names=tables)
    return client


def store(app: App, *metas: ResultMeta) -> None:
    async def run() -> None:
        side = app.backend.worker_store()
        try:
            for meta in metas:
                await side.store(meta)
        finally:
            await side.close()

    asyncio.run(run())


def test_celery_and_another_process_read_what_amqtask_stored(app, pg_url, tables):
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    store(app, ResultMeta(ok, SUCCESS, [1, "two"], name="t.add", args=(1, 2), kwargs={"k": 1}, worker="w@h",
                          retries=1, queue="q"),
          ResultMeta(bad, FAILURE, exception_payload(KeyError("gone")), traceback="Traceback: gone"))
    celery = celery_reader(pg_url, tables)
    try:
        seen = celery.AsyncResult(ok)
        assert seen.get(timeout=10) == [1, "two"] and seen.name == "t.add" and seen.args == [1, 2]
        assert seen.kwargs == {"k": 1} and seen.retries == 1 and seen.date_done is not None
        with pytest.raises(KeyError):
            celery.AsyncResult(bad).get(timeout=10)
    finally:
        celery.close()
    other = read_in_another_process(app.config_path, ok)
    assert other["value"] == [1, "two"] and other["state"] == "SUCCESS" and other["name"] == "t.add"
    failed = read_in_another_process(app.config_path, bad)
    assert failed["raised"] == "KeyError" and failed["state"] == "FAILURE"


def test_a_stored_success_is_never_overwritten_and_forget_deletes(app):
    task_id = str(uuid.uuid4())
    store(app, ResultMeta(task_id, "STARTED"), ResultMeta(task_id, SUCCESS, "first"),
          ResultMeta(task_id, FAILURE, exception_payload(RuntimeError("second run"))))
    result = AsyncResult(task_id, app=app)
    assert result.get(timeout=5, interval=0.05) == "first"
    result.forget()
    assert result.state == "PENDING"


def test_cleanup_deletes_expired_rows_only(app, tables):
    old, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    store(app, ResultMeta(old, SUCCESS, 1, date_done=long_ago), ResultMeta(fresh, SUCCESS, 2))
    done = subprocess.run([sys.executable, "-m", "amqtask.cli", "results", "cleanup", "--config",
                           str(app.config_path)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "deleted 1 results" in done.stdout
    assert AsyncResult(old, app=app).state == "PENDING"
    assert AsyncResult(fresh, app=app).get(timeout=5) == 2


def test_backend_down_store_raises_backend_unavailable_and_get_says_so(tmp_path, prefix):
    down = App("down", config=config_with_backend(tmp_path, prefix, "db+postgresql://postgres@127.0.0.1:1/test"))
    with pytest.raises(BackendUnavailable) as exc:
        store(down, ResultMeta("x", SUCCESS, 1))
    assert "127.0.0.1:1" in str(exc.value)
    with pytest.raises(BackendUnavailable):
        AsyncResult("x", app=down).get(timeout=5)


def test_chord_parts_are_counted_once_and_the_body_claimed_once(app):
    gid = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(3)]

    async def scenario() -> list:
        side = app.backend.worker_store()
        try:
            out = [await side.chord_part_return(gid, ids[0], 0, SUCCESS, 10, 3),
                   await side.chord_part_return(gid, ids[0], 0, SUCCESS, 10, 3),  # redelivered
                   await side.chord_part_return(gid, ids[2], 2, FAILURE, exception_payload(ValueError("x")), 3)]
            ready = await side.chord_part_return(gid, ids[1], 1, SUCCESS, 20, 3)
            out += [ready, await side.chord_part_return(gid, ids[1], 1, SUCCESS, 20, 3),
                    await side.chord_part_return(gid, ids[0], 0, SUCCESS, 10, 3)]
            await side.chord_complete(ready)
            out.append(await side.chord_part_return(gid, ids[1], 1, SUCCESS, 20, 3))
            return out
        finally:
            await side.close()

    first, again, third, ready, reclaimed, other, late = asyncio.run(scenario())
    assert first is again is third is None
    assert [p.task_id for p in ready.parts] == ids and ready.values()[:2] == [10, 20]
    assert ready.error_payload()["exc_message"] == [f"Dependency {ids[2]} raised ValueError('x')"]
    assert reclaimed is not None and other is None and late is None


def test_chords_of_a_hundred_count_concurrent_parts_exactly(app):
    gid = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(100)]

    async def scenario() -> list:
        # every part twice, concurrently over 8 connections: as redeliveries to several workers
        sides = [app.backend.worker_store() for _ in range(8)]
        try:
            return list(await asyncio.gather(*(
                sides[i % 8].chord_part_return(gid, ids[i % 100], i % 100, SUCCESS, i % 100, 100)
                for i in range(200))))
        finally:
            for side in sides:
                await side.close()

    outcomes = [o for o in asyncio.run(scenario()) if o is not None]
    assert len({o.token for o in outcomes}) == 1  # one header task holds the body
    assert outcomes[0].values() == list(range(100))


def test_celery_worker_results_are_read_by_amqtask_and_an_amqtask_chord_runs_there(app, pg_url, tables,
                                                                                    broker_url, prefix):
    queue = f"{prefix}.work"
    app.publisher.transport.declare(app.settings.topology)
    store(app, ResultMeta(str(uuid.uuid4()), SUCCESS, 0))  # creates the tables before Celery's worker starts
    worker = start_celery_worker(queue, broker_url, celery_url(pg_url), PEER_TASK_TABLE=tables["task"],
                                 PEER_GROUP_TABLE=tables["group"], PEER_EXTENDED="1")
    try:
        sent = app.signature("peer.add", (20, 22)).set(queue=queue).delay()
        seen = read_in_another_process(app.config_path, sent.id, timeout=60)
        assert seen["value"] == 42 and seen["name"] == "peer.add"
        failing = app.signature("peer.fail").set(queue=queue).delay()
        with pytest.raises(Exception) as exc:
            failing.get(timeout=60, interval=0.1)
        assert type(exc.value).__name__ == "ValueError" and "peer failed" in str(exc.value)
        assert failing.traceback and "peer failed" in failing.traceback
        crowd = app.signature("peer.add").set(queue=queue)
        group_result = GroupResult(str(uuid.uuid4()), [crowd.clone((i, 1)).delay() for i in range(3)], app=app)
        assert group_result.get(timeout=60, interval=0.1) == [1, 2, 3]
        group_result.save()
        reader = celery_reader(pg_url, tables)
        try:
            assert [r.id for r in reader.GroupResult.restore(group_result.id).results] == \
                [r.id for r in group_result.results]
        finally:
            reader.close()
        body = chord([crowd.clone((1, 1))])(app.signature("peer.sum").set(queue=queue))
        # Celery's workers complete a database-backend chord with celery.chord_unlock, which an
        # amqtask client does not send: the header runs, the body waits for an amqtask worker.
        assert body.parent.get(timeout=60, interval=0.1) == [2]
    finally:
        stop(worker)


@pytest.fixture
def backend(pg_url, tables):
    """A client backend on this test's tables whose statements time out after half a second."""
    client = PostgresBackend(pg_url, expires_seconds=60, extended=True, table_names=tables, timeout=0.5)
    yield client
    client.close()


def insert_sql(table: str) -> sql.Composable:
    return sql.SQL("INSERT INTO {} (task_id, status) VALUES (%s, 'PENDING')").format(sql.Identifier(table))


@pytest.mark.timeout(60)  # without statement timeouts, the store would wait for the lock for ever
def test_a_row_locked_elsewhere_makes_the_store_unavailable_not_stuck(backend, pg_url, tables):
    locked, unrelated = str(uuid.uuid4()), str(uuid.uuid4())
    backend.latest(locked)  # makes the tables
    other = psycopg.connect(conninfo(pg_url))  # a transaction left open: the row stays locked
    try:
        other.execute(insert_sql(tables["task"]), (locked,))

        async def scenario() -> str:
            side = backend.worker_store()
            try:
                with pytest.raises(BackendUnavailable) as exc:
                    await side.store(ResultMeta(locked, SUCCESS, 1))
                await side.store(ResultMeta(unrelated, SUCCESS, 2))  # the next result is not held up
                return str(exc.value)
            finally:
                await side.close()

        message = asyncio.run(scenario())
        other.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(tables["task"])))
        with pytest.raises(BackendUnavailable):  # a client's read waits no longer than a store
            backend.latest(unrelated)
    finally:
        other.rollback()
        other.close()
    assert f"cannot store the result of {locked}" in message and "timeout" in message
    assert backend.latest(unrelated)["result"] == 2


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))


@pytest.fixture
def row_rights_role(pg_url):
    """A login role, and grant(table, ...) giving it only SELECT, INSERT, UPDATE and
    DELETE on tables (and the id sequences): what a DBA grants an application.
    Dropped afterwards with every right it was given."""
    role = f"amqtask_rows_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(conninfo(pg_url), autocommit=True)
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))

    def grant(*tables: str) -> None:
        for table in tables:
            admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                sql.Identifier(table), sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT USAGE ON SEQUENCE task_id_sequence, taskset_id_sequence TO {}").format(
            sql.Identifier(role)))

    try:
        yield role, grant
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))  # its grants
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        admin.close()


def test_a_role_with_row_rights_only_reads_and_stores_in_tables_celery_made(pg_url, tables, row_rights_role):
    role, grant = row_rights_role
    celery = celery_reader(pg_url, tables)
    try:
        celery.backend.ResultSession().close()  # Celery makes its two tables, as its first use would
    finally:
        celery.close()
    grant(tables["task"], tables["group"])
    as_app = PostgresBackend(as_role(pg_url, role), expires_seconds=60, extended=True, table_names=tables)
    task_id, group_id = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        assert as_app.latest(task_id) is None

        async def store_as_worker() -> None:
            side = as_app.worker_store()
            try:
                await side.store(ResultMeta(task_id, SUCCESS, [1, 2], name="t.add", args=(1, 1), kwargs={}))
            finally:
                await side.close()

        asyncio.run(store_as_worker())
        assert as_app.latest(task_id)["result"] == [1, 2]
        as_app.save_group(group_id, [task_id])
        assert as_app.restore_group(group_id) == [task_id]
        # Chords need amqtask's own tables: made once by a role that may, then rows only.
        owner = PostgresBackend(pg_url, expires_seconds=60, table_names=tables)
        owner.set_chord_size(group_id, 1)
        owner.close()
        grant(f"{tables['task']}_chord", f"{tables['task']}_chord_part")
        as_app.set_chord_size(group_id, 1)

        async def count_part() -> object:
            side = as_app.worker_store()
            try:
                return await side.chord_part_return(group_id, task_id, 0, SUCCESS, [1, 2], 1)
            finally:
                await side.close()

        assert asyncio.run(count_part()).values() == [[1, 2]]
    finally:
        as_app.close()


def wait_for_lock_wait(pg_url: str, table: str) -> None:
    """Until a query of amqtask's waits for a lock on `table` (at most 30 s)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(conninfo(pg_url), autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'amqtask results' "
                                   "AND wait_event_type = 'Lock' AND query LIKE %s", (f"%{table}%",)).fetchone()
            if waiting and waiting[0]:
                return
            time.sleep(0.05)
    raise AssertionError(f"no query waited for a lock on {table}")


def test_a_forked_child_uses_a_connection_and_lock_of_its_own(pg_url, tables):
    """gunicorn --preload: a request thread of the master was inside a query at the fork."""
    backend = PostgresBackend(pg_url, expires_seconds=60, table_names=tables)
    backend.latest("made the tables")
    other = psycopg.connect(conninfo(pg_url))
    try:
        other.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(tables["task"])))
        reader = threading.Thread(target=backend.latest, args=("waits for the table",), daemon=True)
        reader.start()
        wait_for_lock_wait(pg_url, tables["task"])  # the reader holds the backend's lock meanwhile

        def child() -> None:
            try:
                assert backend.restore_group("none such") is None
            finally:
                backend.close()

        assert in_a_child(child) == 0
    finally:
        other.rollback()
        other.close()
    reader.join()
    assert backend.latest("after the child") is None  # the parent's connection is still its own
    backend.close()


# -- an amqtask worker storing in PostgreSQL ---------------------------------------------

@pytest.fixture
def pg_harness(prefix, tmp_path, amqp, broker_url, pg_url, tables):
    section = (f"results:\n  backend: '{pg_url}'\n  expires: 10m\n  extended: true\n"
               f"  table_names: {{task: {tables['task']}, group: {tables['group']}}}\n")
    h = WorkerHarness(prefix, tmp_path, amqp, results=section)
    yield h
    h.stop_all()


def test_an_amqtask_worker_stores_what_another_process_and_celery_read(pg_harness, pg_url, tables):
    h = pg_harness
    h.start("-P", "threads", "-c", "4")
    m = h.module
    ok, failing = m.add.delay(20, 22), m.fail_on.delay(13)
    seen = read_in_another_process(h.config, ok.id)
    assert seen["value"] == 42 and seen["state"] == "SUCCESS" and seen["name"] == "t.add"
    failed = read_in_another_process(h.config, failing.id)
    assert failed["raised"] == "ValueError" and failed["message"] == "bad input 13"
    celery = celery_reader(pg_url, tables)
    try:
        by_celery = celery.AsyncResult(ok.id)
        assert by_celery.get(timeout=10) == 42 and by_celery.name == "t.add" and by_celery.args == [20, 22]
        assert by_celery.worker == h.processes[0].name and by_celery.retries == 0
        with pytest.raises(ValueError, match="bad input 13"):
            celery.AsyncResult(failing.id).get(timeout=10)
    finally:
        celery.close()


def test_a_group_and_a_chord_with_one_failing_member_on_postgresql(pg_harness):
    h = pg_harness
    h.start("-P", "threads", "-c", "4")
    m = h.module
    crowd = group(m.fail_on.s(i, bad=50) for i in range(100)).apply_async()
    with pytest.raises(ValueError, match="bad input 50"):
        crowd.get(timeout=60)
    h.wait_for(crowd.ready, what="every member of the group")  # get() raised at the first failure
    assert crowd.completed_count() == 99 and crowd.failed() and not crowd.successful()
    ok = chord(m.fail_on.s(i, bad=-1) for i in range(100))(m.tsum.s())
    assert ok.get(timeout=60) == sum(range(100))
    failing = chord(m.fail_on.s(i, bad=50) for i in range(100))(m.tsum.s())
    with pytest.raises(Exception) as exc:
        failing.get(timeout=60)
    assert type(exc.value).__name__ == "ChordError" and "ValueError('bad input 50')" in str(exc.value)
    assert len(h.records("body")) == 1  # only the successful chord's body ran
