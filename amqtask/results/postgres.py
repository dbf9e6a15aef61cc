"""db+postgresql://: results in PostgreSQL, in the tables Celery's database backend uses.

- `celery_taskmeta` (id from `task_id_sequence`, task_id unique, status, result,
  date_done, traceback, children; name, args, kwargs, worker, retries, queue with
  `results.extended`): `result`, `args`, `kwargs` and `children` hold JSON bytes,
  as Celery writes them with its default json result_serializer; `date_done` is UTC
  without a zone.
- `celery_tasksetmeta` for saved groups (`result` = GroupResult.as_tuple() in JSON).
- amqtask's own chord counter: `<task table>_chord` (one row per chord, counted
  under its row lock) and `<task table>_chord_part` (one row per header task id
  and index, so a redelivered part counts once).

Missing tables and columns are created as Celery 5 creates them, so Celery and
amqtask share one database either way round; when they exist (the catalog says
so), no DDL runs and no table lock is taken, so a role with only SELECT, INSERT,
UPDATE and DELETE on them (and USAGE on the sequences) is enough, as for Celery.
The chord tables are needed (and made) only when chords are used. Every
statement has a timeout (waiting for locks included): past it, the backend is
unavailable (BackendUnavailable) rather than stuck. Rows are never expired by
PostgreSQL: `amqtask results cleanup` deletes those older than `results.expires`.
Needs the `postgres` extra (psycopg 3), imported only when this backend is used.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from ..forks import start_afresh_after_fork
from .base import ChordPart, ChordReady, PublishFn, ResultBackend, ResultStore, group_tuple, ids_from_group_tuple
from .base import json_bytes, json_value, operation_timeout
from .meta import SUCCESS, BackendUnavailable, ResultMeta, parse_date

# Not reachable, too slow (statement or lock timeout), or refused (a role without the rights).
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.InsufficientPrivilege)
LAST_INDEX = 2**31 - 1  # a part sent without group_index sorts last, as Celery's '+inf'
EXTENDED = ("name", "args", "kwargs", "worker", "retries", "queue")
TASK_SEQUENCE, GROUP_SEQUENCE = "task_id_sequence", "taskset_id_sequence"
# The task table's columns after Celery's first six, as Celery 5's TaskExtended model has them.
COLUMN_TYPES = {"children": "BYTEA", "name": "VARCHAR(155)", "args": "BYTEA", "kwargs": "BYTEA",
                "worker": "VARCHAR(155)", "retries": "INTEGER", "queue": "VARCHAR(155)", "stamps": "BYTEA"}
# Every statement on a connection ends within the backend's timeout: a row lock held
# elsewhere, or a server that stopped answering queries, makes it unavailable, not stuck.
SESSION_TIMEOUTS = sql.SQL("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)")


def conninfo(url: str) -> str:
    """`db+postgresql[+driver]://user:pw@host:port/db?opts` -> a libpq URI."""
    rest = url[3:] if url.startswith("db+") else url
    scheme, sep, tail = rest.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {redacted(url)}")
    return f"postgresql://{tail}"


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


class Tables:
    """The SQL for one set of table names."""

    def __init__(self, task: str = "celery_taskmeta", group: str = "celery_tasksetmeta") -> None:
        self.task, self.group = sql.Identifier(task), sql.Identifier(group)
        self.chord, self.part = sql.Identifier(f"{task}_chord"), sql.Identifier(f"{task}_chord_part")
        self.task_name, self.group_name = task, group

    def catalog(self) -> tuple[sql.Composable, tuple]:
        """A query for what exists of these tables, as (kind, name) rows: 'relation' for
        tables and sequences, 'column' for the task table's columns. It reads the
        catalog only, so any role may run it."""
        names = [TASK_SEQUENCE, GROUP_SEQUENCE, self.task_name, self.group_name, f"{self.task_name}_chord",
                 f"{self.task_name}_chord_part"]
        query = sql.SQL(
            "SELECT 'relation', n FROM unnest(%s::text[]) AS n WHERE to_regclass(quote_ident(n)) IS NOT NULL "
            "UNION ALL SELECT 'column', attname::text FROM pg_attribute "
            "WHERE attrelid = to_regclass(quote_ident(%s)) AND attnum > 0 AND NOT attisdropped")
        return query, (names, self.task_name)

    def setup(self, found: Iterable[tuple[str, str]], *, extended: bool, chords: bool) -> list[sql.Composable]:
        """The DDL still needed, given the catalog rows `found`; empty when all that is
        needed exists. Then nothing is locked, and a role that may only read and write
        rows (as Celery's database backend needs) is enough. The chord tables are
        needed only by chords."""
        relations = {name for kind, name in found if kind == "relation"}
        columns = {name for kind, name in found if kind == "column"}
        needed = [statement for name, statements in self._creations(chords) if name not in relations
                  for statement in statements]
        if self.task_name in relations:
            missing = [c for c in ("children", *(EXTENDED if extended else ())) if c not in columns]
            if missing:  # a table from an older Celery, or one made without result_extended
                needed.append(sql.SQL("ALTER TABLE {} ").format(self.task) + sql.SQL(", ").join(
                    sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(sql.Identifier(c), sql.SQL(COLUMN_TYPES[c]))
                    for c in missing))
        # Concurrent CREATE ... IF NOT EXISTS can still collide; one at a time.
        return [sql.SQL("SELECT pg_advisory_xact_lock(hashtext('amqtask results schema'))"), *needed] if needed else []

    def _creations(self, chords: bool) -> list[tuple[str, list[sql.Composable]]]:
        """Each table or sequence, and the statements that create it, as Celery 5 does
        (the task table with every result_extended column, so either side may extend)."""
        t, g = self.task, self.group
        columns = sql.SQL("").join(sql.SQL(", {} {}").format(sql.Identifier(c), sql.SQL(kind))
                                   for c, kind in COLUMN_TYPES.items())
        out = [
            (TASK_SEQUENCE, [sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(sql.Identifier(TASK_SEQUENCE))]),
            (GROUP_SEQUENCE, [sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(sql.Identifier(GROUP_SEQUENCE))]),
            (self.task_name, [
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (id INTEGER NOT NULL DEFAULT nextval('task_id_sequence'), "
                        "task_id VARCHAR(155), status VARCHAR(50), result BYTEA, "
                        "date_done TIMESTAMP WITHOUT TIME ZONE, traceback TEXT{}, PRIMARY KEY (id), "
                        "UNIQUE (task_id))").format(t, columns),
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (date_done)").format(
                    sql.Identifier(f"ix_{self.task_name}_date_done"), t)]),
            (self.group_name, [
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (id INTEGER NOT NULL DEFAULT nextval('taskset_id_sequence'), "
                        "taskset_id VARCHAR(155), result BYTEA, date_done TIMESTAMP WITHOUT TIME ZONE, "
                        "PRIMARY KEY (id), UNIQUE (taskset_id))").format(g),
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (date_done)").format(
                    sql.Identifier(f"ix_{self.group_name}_date_done"), g)]),
        ]
        if chords:
            out += [
                (f"{self.task_name}_chord", [sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (group_id VARCHAR(155) PRIMARY KEY, size INTEGER, "
                    "count INTEGER NOT NULL DEFAULT 0, claimed_by VARCHAR(155), done BOOLEAN NOT NULL DEFAULT false, "
                    "date_done TIMESTAMP WITHOUT TIME ZONE)").format(self.chord)]),
                (f"{self.task_name}_chord_part", [sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (group_id VARCHAR(155), task_id VARCHAR(155), idx INTEGER, "
                    "state VARCHAR(50), result BYTEA, PRIMARY KEY (group_id, task_id, idx))").format(self.part)]),
            ]
        return out

    def upsert(self, extended: bool) -> sql.Composable:
        columns = ["task_id", "status", "result", "traceback", "date_done", "children"]
        if extended:
            columns += list(EXTENDED)
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns if c != "task_id")
        return sql.SQL(
            "INSERT INTO {t} (id, {cols}) VALUES (nextval('task_id_sequence'), {vals}) "
            "ON CONFLICT (task_id) DO UPDATE SET {updates} WHERE {t}.status IS DISTINCT FROM {success}"
        ).format(t=self.task, cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                 vals=sql.SQL(", ").join(sql.Placeholder() * len(columns)), updates=updates,
                 success=sql.Literal(SUCCESS))


def row_values(meta: ResultMeta, extended: bool) -> list[Any]:
    done = meta.done_at()
    values: list[Any] = [meta.task_id, meta.status, json_bytes(meta.result), meta.traceback,
                         utc_naive(done) if done else None, json_bytes(list(meta.children)) if meta.children else None]
    if extended:
        values += [meta.name, None if meta.args is None else json_bytes(list(meta.args)),
                   None if meta.kwargs is None else json_bytes(dict(meta.kwargs)), meta.worker, meta.retries,
                   meta.queue]
    return values


def document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A celery_taskmeta row as Celery's result document."""
    done = parse_date(row.get("date_done"))
    doc = {"task_id": row["task_id"], "status": row["status"], "result": json_value(row.get("result")),
           "traceback": row.get("traceback"), "children": json_value(row.get("children")) or [],
           "date_done": done.isoformat() if done else None}
    for key in EXTENDED:
        if row.get(key) is not None:
            doc[key] = json_value(row[key]) if key in ("args", "kwargs") else row[key]
    return doc


class PostgresBackend(ResultBackend):
    def __init__(self, url: str, *, expires_seconds: int, extended: bool = False, connect_timeout: float = 5.0,
                 table_names: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
        """`timeout`: how long one statement may take, waiting for locks included
        (default: operation_timeout(connect_timeout)); past it the backend is unavailable."""
        self.raw_url = url
        self.url = redacted(url)
        self.conninfo = conninfo(url)
        self.expires = expires_seconds
        self.extended = extended
        self.connect_timeout = connect_timeout
        self.timeout = operation_timeout(connect_timeout) if timeout is None else timeout
        names = dict(table_names or {})
        self.tables = Tables(names.get("task", "celery_taskmeta"), names.get("group", "celery_tasksetmeta"))
        self.after_fork()
        start_afresh_after_fork(self)

    def after_fork(self) -> None:
        """A connection and lock of this process's own (at creation, and in a forked
        child, where the parent's are not ours to use)."""
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._checked: set[bool] = set()  # the connection found (or made) the tables: without, with chords

    def connect_args(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": max(1, math.ceil(self.connect_timeout)),
                "application_name": "amqtask results"}

    def session_timeouts(self) -> tuple[str, str]:
        """statement_timeout and lock_timeout, in milliseconds (SESSION_TIMEOUTS' parameters)."""
        milliseconds = str(max(1, round(self.timeout * 1000)))
        return milliseconds, milliseconds

    def _connection(self, chords: bool) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.conninfo, **self.connect_args())
            self._conn.execute(SESSION_TIMEOUTS, self.session_timeouts())
            self._checked = set()
        if chords not in self._checked:
            statements = self.tables.setup(self._conn.execute(*self.tables.catalog()).fetchall(),
                                           extended=self.extended, chords=chords)
            if statements:
                with self._conn.transaction():
                    for statement in statements:
                        self._conn.execute(statement)
            self._checked.add(chords)
        return self._conn

    def _run(self, what: str, fn: Any, *, chords: bool = False) -> Any:
        with self._lock:
            try:
                return fn(self._connection(chords))
            except UNAVAILABLE as exc:
                self._drop()
                raise BackendUnavailable(f"PostgreSQL result backend {self.url}: cannot {what}: "
                                         f"{str(exc).strip() or type(exc).__name__}") from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass

    def _fetch(self, query: sql.Composable, params: tuple) -> list[dict[str, Any]]:
        def run(conn: psycopg.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(query, params)
            names = [c.name for c in cur.description or ()]
            return [dict(zip(names, row)) for row in cur.fetchall()]

        return self._run("read results", run)

    def latest(self, task_id: str) -> dict[str, Any] | None:
        rows = self._fetch(sql.SQL("SELECT * FROM {} WHERE task_id = %s").format(self.tables.task), (task_id,))
        return document(rows[0]) if rows else None

    def forget(self, task_id: str) -> None:
        self._run("delete a result", lambda c: c.execute(
            sql.SQL("DELETE FROM {} WHERE task_id = %s").format(self.tables.task), (task_id,)))

    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        query = sql.SQL("INSERT INTO {} (id, taskset_id, result, date_done) VALUES (nextval('taskset_id_sequence'), "
                        "%s, %s, %s) ON CONFLICT (taskset_id) DO UPDATE SET result = EXCLUDED.result, "
                        "date_done = EXCLUDED.date_done").format(self.tables.group)
        value = json_bytes(group_tuple(group_id, task_ids))
        now = utc_naive(dt.datetime.now(dt.timezone.utc))
        self._run("save a group", lambda c: c.execute(query, (group_id, value, now)))

    def restore_group(self, group_id: str) -> list[str] | None:
        rows = self._fetch(sql.SQL("SELECT result FROM {} WHERE taskset_id = %s").format(self.tables.group),
                           (group_id,))
        return ids_from_group_tuple(json_value(rows[0]["result"])) if rows else None

    def delete_group(self, group_id: str) -> None:
        self._run("delete a group", lambda c: c.execute(
            sql.SQL("DELETE FROM {} WHERE taskset_id = %s").format(self.tables.group), (group_id,)))

    def set_chord_size(self, group_id: str, size: int) -> None:
        """A new run of the chord: its counter row starts at zero with this size."""
        t = self.tables

        def run(conn: psycopg.Connection) -> None:
            with conn.transaction():
                conn.execute(sql.SQL("DELETE FROM {} WHERE group_id = %s").format(t.part), (group_id,))
                conn.execute(sql.SQL(
                    "INSERT INTO {c} (group_id, size, count, claimed_by, done, date_done) VALUES (%s, %s, 0, NULL, "
                    "false, %s) ON CONFLICT (group_id) DO UPDATE SET size = EXCLUDED.size, count = 0, "
                    "claimed_by = NULL, done = false, date_done = EXCLUDED.date_done").format(c=t.chord),
                    (group_id, size, utc_naive(dt.datetime.now(dt.timezone.utc))))

        self._run("store a chord's size", run, chords=True)

    def cleanup(self) -> tuple[int, int]:
        """Delete results, groups and chord rows older than `results.expires` (Celery's
        `celery.backend_cleanup` does the same with its own setting)."""
        cutoff = utc_naive(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self.expires))
        t = self.tables

        def run(conn: psycopg.Connection) -> tuple[int, int]:
            with conn.transaction():
                tasks = conn.execute(sql.SQL("DELETE FROM {} WHERE date_done < %s").format(t.task), (cutoff,))
                groups = conn.execute(sql.SQL("DELETE FROM {} WHERE date_done < %s").format(t.group), (cutoff,))
                conn.execute(sql.SQL("DELETE FROM {p} WHERE group_id IN (SELECT group_id FROM {c} WHERE date_done < %s)")
                             .format(p=t.part, c=t.chord), (cutoff,))
                conn.execute(sql.SQL("DELETE FROM {} WHERE date_done < %s").format(t.chord), (cutoff,))
                return tasks.rowcount, groups.rowcount

        return self._run("delete expired results", run, chords=True)  # type: ignore[no-any-return]

    def worker_store(self, *, publish: PublishFn | None = None) -> ResultStore:
        return PostgresStore(self)

    def close(self) -> None:
        with self._lock:
            self._drop()


class PostgresStore(ResultStore):
    """The worker's side: one psycopg AsyncConnection, used one statement at a time."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._conn: psycopg.AsyncConnection | None = None
        self._checked: set[bool] = set()  # as PostgresBackend._checked
        # One statement at a time; each ends within the backend's timeout, so a stuck
        # one holds up the others for that long at most.
        self._lock = asyncio.Lock()
        self._upsert = backend.tables.upsert(backend.extended)

    async def _connection(self, chords: bool) -> psycopg.AsyncConnection:
        backend = self.backend
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(backend.conninfo, **backend.connect_args())
            await self._conn.execute(SESSION_TIMEOUTS, backend.session_timeouts())
            self._checked = set()
        if chords not in self._checked:
            found = await (await self._conn.execute(*backend.tables.catalog())).fetchall()
            statements = backend.tables.setup(found, extended=backend.extended, chords=chords)
            if statements:
                async with self._conn.transaction():
                    for statement in statements:
                        await self._conn.execute(statement)
            self._checked.add(chords)
        return self._conn

    async def _run(self, what: str, fn: Any, *, chords: bool = False) -> Any:
        async with self._lock:
            try:
                return await fn(await self._connection(chords))
            except UNAVAILABLE as exc:
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:  # a broken connection may fail to close; it is gone either way
                        pass
                raise BackendUnavailable(f"PostgreSQL result backend {self.backend.url}: cannot {what}: "
                                         f"{str(exc).strip() or type(exc).__name__}") from None

    async def store(self, meta: ResultMeta) -> None:
        values = row_values(meta, self.backend.extended)
        await self._run(f"store the result of {meta.task_id}", lambda c: c.execute(self._upsert, values))

    async def chord_part_return(self, group_id: str, task_id: str, index: int | None, state: str, result: Any,
                                chord_size: int | None) -> ChordReady | None:
        t = self.backend.tables
        idx = LAST_INDEX if index is None else int(index)

        async def run(conn: psycopg.AsyncConnection) -> ChordReady | None:
            async with conn.transaction():
                inserted = await conn.execute(sql.SQL(
                    "INSERT INTO {} (group_id, task_id, idx, state, result) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING").format(t.part), (group_id, task_id, idx, state, json_bytes(result)))
                # The counter row: created by the first part (or by the client), locked until commit.
                cur = await conn.execute(sql.SQL(
                    "INSERT INTO {c} (group_id, size, count, date_done) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (group_id) DO UPDATE SET count = {c}.count + EXCLUDED.count, "
                    "size = COALESCE({c}.size, EXCLUDED.size) RETURNING size, count, claimed_by, done").format(c=t.chord),
                    (group_id, chord_size, inserted.rowcount, utc_naive(dt.datetime.now(dt.timezone.utc))))
                size, count, claimed_by, done = await cur.fetchone()  # type: ignore[misc]
                if done or size is None or count < size or claimed_by not in (None, task_id):
                    return None
                await conn.execute(sql.SQL("UPDATE {} SET claimed_by = %s WHERE group_id = %s").format(t.chord),
                                   (task_id, group_id))
                rows = await (await conn.execute(sql.SQL(
                    "SELECT task_id, state, result FROM {} WHERE group_id = %s ORDER BY idx, task_id").format(t.part),
                    (group_id,))).fetchall()
            parts = tuple(ChordPart(r[0], r[1], json_value(r[2])) for r in rows)
            return ChordReady(group_id, parts, token=task_id)

        return await self._run(f"count part {task_id} of chord {group_id}", run,  # type: ignore[no-any-return]
                               chords=True)

    async def chord_complete(self, ready: ChordReady) -> None:
        t = self.backend.tables

        async def run(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                cur = await conn.execute(sql.SQL(
                    "UPDATE {} SET done = true, date_done = %s WHERE group_id = %s AND claimed_by = %s").format(t.chord),
                    (utc_naive(dt.datetime.now(dt.timezone.utc)), ready.group_id, ready.token))
                if cur.rowcount:
                    await conn.execute(sql.SQL("DELETE FROM {} WHERE group_id = %s").format(t.part), (ready.group_id,))

        await self._run(f"finish chord {ready.group_id}", run, chords=True)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass


__all__ = ["PostgresBackend", "PostgresStore", "conninfo", "Tables"]
