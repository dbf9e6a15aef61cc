"""redis:// and rediss:// (and sentinel://): results in Redis, as Celery 5 stores them.

- A task's result is the key `celery-task-meta-<id>`: Celery's JSON document, with a
  TTL of `results.expires`; every write is also published on a channel of the same
  name, which is how `get()` waits (pub/sub, no busy polling).
- A saved group is `celery-taskset-meta-<id>`: `{"result": GroupResult.as_tuple()}`.
- A chord is counted as Celery's redis backend counts it, with the same keys
  (`celery-taskset-meta-<group>.j` results in header order, `.s` the size the
  client stored, `.t` Celery's size adjustment, `.d` the parts already counted,
  `.c` the claim on the body / the done marker), so chords started by Celery
  complete on amqtask workers and the reverse.

Needs the `redis` extra (redis-py), imported only when this backend is used.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aredis
import redis.exceptions as rx

from .base import ChordPart, ChordReady, PublishFn, ResultBackend, ResultStore, group_tuple, ids_from_group_tuple
from .base import json_bytes, json_value, operation_timeout
from .meta import FAILURE, READY_STATES, BackendUnavailable, ResultMeta, TimeoutError

log = logging.getLogger("amqtask.results")
T = TypeVar("T")
TASK_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"
# Errors that mean "Redis is not there or cannot take this now".
UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, rx.ReadOnlyError, rx.ResponseError, OSError)
# A chord's claim: held by the header task id that completed it until the body is sent.
CLAIM_SECONDS = 600
# Between pub/sub wake-ups the key is read again, in case a notification was
# missed while the subscription reconnected. Not a poll: one GET every few seconds.
RECHECK_SECONDS = 5.0

# Store unless a SUCCESS is already stored (a redelivered task's second run must
# not replace its result), then notify waiters. Atomic, unlike a GET then SET.
STORE_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, doc = pcall(cjson.decode, current)
    if ok and type(doc) == 'table' and doc['status'] == 'SUCCESS' then
        return 0
    end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

# Celery 5's chord bookkeeping, recorded atomically: a part is counted once per
# "<task id>:<index>", the body is claimed by the header task that completed the
# chord (a redelivery of that same task claims it again after a crash), and a
# chord marked done is never counted again.
CHORD_PART_LUA = """
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tid, value, score = ARGV[1], ARGV[2], ARGV[3]
local expires, claim_expires, size_hint = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if redis.call('GET', ckey) == 'done' then
    return {-1, 0, 0, 0, {}}
end
local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
    redis.call('ZADD', jkey, score, value)
    redis.call('SADD', dkey, member)
end
if size_hint ~= '' and redis.call('EXISTS', skey) == 0 then
    redis.call('SET', skey, size_hint)
end
local readycount = redis.call('ZCOUNT', jkey, '-inf', '+inf')
if expires > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do
        redis.call('EXPIRE', key, expires)
    end
    redis.call('EXPIRE', gkey, expires)
end
local totaldiff = redis.call('GET', tkey)
local size = redis.call('GET', skey)
local claimed = 0
if size and readycount == tonumber(size) + tonumber(totaldiff or 0) then
    local holder = redis.call('GET', ckey)
    if not holder then
        redis.call('SET', ckey, tid, 'EX', claim_expires)
        claimed = 1
    elseif holder == tid then
        redis.call('EXPIRE', ckey, claim_expires)
        claimed = 1
    end
end
local parts = {}
if claimed == 1 then
    parts = redis.call('ZRANGE', jkey, 0, -1)
end
return {readycount, totaldiff or 0, size or 0, claimed, parts}
"""

# Celery's cleanup: only the claim holder drops the chord's keys and leaves 'done'.
CHORD_DONE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
    redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
    return 1
end
return 0
"""


def task_key(task_id: str) -> str:
    if not task_id:
        raise ValueError("a task id must not be empty")
    return TASK_PREFIX + task_id


def group_key(group_id: str, suffix: str = "") -> str:
    if not group_id:
        raise ValueError("a group id must not be empty")
    return GROUP_PREFIX + group_id + suffix


def redacted(url: str) -> str:
    parts = urlsplit(url.split(";")[0])
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return url.replace(parts.netloc, netloc)
    return url


def _sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`sentinel://[:pw@]h1:26379;sentinel://h2:26379/0?master_name=mymaster` (Celery's form)."""
    nodes, options = [], {}
    for part in url.split(";"):
        bits = urlsplit(part.strip())
        nodes.append((bits.hostname or "127.0.0.1", bits.port or 26379))
        if bits.password:
            options["password"] = unquote(bits.password)
        if bits.path.strip("/"):
            options["db"] = int(bits.path.strip("/"))
        for key, values in parse_qs(bits.query).items():
            options[key] = values[-1]
    if "master_name" not in options:
        raise ValueError("a sentinel:// result backend URL needs ?master_name=NAME")
    return nodes, options


class RedisBackend(ResultBackend):
    def __init__(self, url: str, *, expires_seconds: int, extended: bool = False,
                 connect_timeout: float = 5.0) -> None:
        self.raw_url = url
        self.url = redacted(url)
        self.expires = expires_seconds
        self.extended = extended
        self.connect_timeout = connect_timeout
        # Built here, not on first use (it connects only when used): threads reading
        # at once share one connection pool. redis-py's pool starts afresh in a forked child.
        self.client: redis.Redis = self.open_sync()

    # -- connections ---------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        return {"socket_connect_timeout": self.connect_timeout, "socket_timeout": operation_timeout(self.connect_timeout),
                "retry_on_timeout": False}

    def open_sync(self) -> redis.Redis:
        if self.raw_url.startswith("sentinel://"):
            from redis.sentinel import Sentinel

            nodes, options = _sentinel_nodes(self.raw_url)
            name = options.pop("master_name")
            sentinel = Sentinel(nodes, sentinel_kwargs={"socket_connect_timeout": self.connect_timeout},
                                               **self._options())
            return sentinel.master_for(name, **{k: v for k, v in options.items() if k in ("db", "password")})
        return redis.Redis.from_url(self.raw_url, **self._options())

    def open_async(self) -> aredis.Redis:
        if self.raw_url.startswith("sentinel://"):
            from redis.asyncio.sentinel import Sentinel as AsyncSentinel

            nodes, options = _sentinel_nodes(self.raw_url)
            name = options.pop("master_name")
            sentinel = AsyncSentinel(nodes, **self._options())
            return sentinel.master_for(name, **{k: v for k, v in options.items() if k in ("db", "password")})
        return aredis.Redis.from_url(self.raw_url, **self._options())

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"Redis result backend {self.url}: cannot {what}: {exc}") from None

    # -- reading -------------------------------------------------------------------
    def latest(self, task_id: str) -> dict[str, Any] | None:
        return _document(self._call("read a result", self.client.get, task_key(task_id)))

    def wait(self, task_id: str, timeout: float | None, *, interval: float = 0.5) -> dict[str, Any]:
        """Subscribe to the key's channel, then read the key (so a result stored in
        between is not missed), then sleep on the subscription until it is ready."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key = task_key(task_id)
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            self._call("subscribe", pubsub.subscribe, key)
            while True:
                doc = self.latest(task_id)
                if doc is not None and doc.get("status") in READY_STATES:
                    return doc
                remaining = RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no result for task {task_id} within {timeout:g}s")
                self._call("wait for a result", pubsub.get_message, True, min(remaining, RECHECK_SECONDS))
        finally:
            try:
                pubsub.close()
            except UNAVAILABLE:
                pass

    async def wait_async(self, task_id: str, timeout: float | None, *, interval: float = 0.5) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        key = task_key(task_id)
        client = self.open_async()
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(key)
                while True:
                    doc = _document(await client.get(key))
                    if doc is not None and doc.get("status") in READY_STATES:
                        return doc
                    remaining = RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no result for task {task_id} within {timeout:g}s")
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, RECHECK_SECONDS))
            finally:
                await pubsub.aclose()
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"Redis result backend {self.url}: cannot wait for a result: {exc}") from None
        finally:
            await client.aclose()

    def forget(self, task_id: str) -> None:
        self._call("delete a result", self.client.delete, task_key(task_id))

    # -- groups and chords ---------------------------------------------------------
    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        value = json_bytes({"result": group_tuple(group_id, task_ids)})
        self._call("save a group", lambda: self.client.set(group_key(group_id), value, ex=self.expires or None))

    def restore_group(self, group_id: str) -> list[str] | None:
        raw = self._call("read a group", self.client.get, group_key(group_id))
        if raw is None:
            return None
        doc = json_value(raw)
        return ids_from_group_tuple(doc.get("result") if isinstance(doc, dict) else None)

    def delete_group(self, group_id: str) -> None:
        self._call("delete a group", self.client.delete, group_key(group_id))

    def set_chord_size(self, group_id: str, size: int) -> None:
        """As Celery's client does before sending a chord's header: a new run of the
        chord (even a re-sent frozen one) starts unclaimed with this size."""
        def run() -> None:
            with self.client.pipeline() as pipe:
                pipe.delete(group_key(group_id, ".c"))
                pipe.set(group_key(group_id, ".s"), size, ex=self.expires or None)
                pipe.execute()

        self._call("store a chord's size", run)

    def worker_store(self, *, publish: PublishFn | None = None) -> ResultStore:
        return RedisStore(self)

    def close(self) -> None:
        """Close its connections; the next call opens new ones."""
        self.client.close()
        self.client.connection_pool.disconnect()  # a sentinel master's pool is not closed with its client


class RedisStore(ResultStore):
    """The worker's side: redis.asyncio, one connection pool per worker process."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self._client: aredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def client(self) -> aredis.Redis:
        if self._client is None:
            self._client = self.backend.open_async()
        return self._client

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def _run(self, what: str, source: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._script(source)(keys=keys, args=args)
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"Redis result backend {self.backend.url}: cannot {what}: {exc}") from None

    async def store(self, meta: ResultMeta) -> None:
        value = json_bytes(meta.document(extended=self.backend.extended))
        await self._run(f"store the result of {meta.task_id}", STORE_LUA, [task_key(meta.task_id)],
                        [value, self.backend.expires])

    async def chord_part_return(self, group_id: str, task_id: str, index: int | None, state: str, result: Any,
                                chord_size: int | None) -> ChordReady | None:
        score = "+inf" if index is None else str(int(index))
        value = json_bytes([1, task_id, state, result])
        keys = [group_key(group_id, s) for s in (".j", ".t", ".s", ".d", "", ".c")]
        count, _, _, claimed, raw_parts = await self._run(
            f"count part {task_id} of chord {group_id}", CHORD_PART_LUA, keys,
            [task_id, value, score, self.backend.expires, CLAIM_SECONDS, "" if chord_size is None else chord_size])
        if count == -1 or not claimed:
            return None
        parts = []
        for raw in raw_parts:
            _, tid, part_state, part_result = json_value(raw)
            parts.append(ChordPart(str(tid), str(part_state), part_result))
        return ChordReady(group_id, tuple(parts), token=task_id)

    async def chord_complete(self, ready: ChordReady) -> None:
        gid = ready.group_id
        keys = [group_key(gid, ".c"), group_key(gid, ".j"), group_key(gid, ".t"), group_key(gid, ".s"),
                group_key(gid, ".d")]
        await self._run(f"finish chord {gid}", CHORD_DONE_LUA, keys, [ready.token, max(self.backend.expires, 300)])

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._scripts.clear()
            try:
                await client.aclose()
            except UNAVAILABLE:
                pass


def _document(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json_value(raw)
    except ValueError:
        return {"status": FAILURE, "result": {"exc_type": "TaskError", "exc_message": [
            "the stored result is not JSON (result_serializer other than json?)"], "exc_module": "amqtask.results"}}
    return doc if isinstance(doc, dict) else None


__all__ = ["RedisBackend", "RedisStore", "task_key", "group_key"]
