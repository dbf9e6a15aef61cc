"""Celery settings other than routing, each mapped to its routing.yaml key (or not)."""
from __future__ import annotations

import datetime as dt
import ssl
from typing import Any, Mapping

from ..brokerurl import BrokerURLError, parse_broker_urls, redact_url
from ..settings import COMPRESSIONS, SERIALIZERS
from ..topology.loader import BROKER_ENV, RATE_LIMIT
from .collect import Raw, Run
from .names import Setting
from .schedules import duration, translate_schedules

CONTENT_TYPES = {"application/json": "json", "application/x-msgpack": "msgpack", "application/x-yaml": "yaml",
                 "application/x-python-serialize": "pickle"}
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")
POOLS = {"prefork": "prefork", "processes": "prefork", "threads": "threads", "solo": "solo"}
# Task options Celery sets for every task, and their routing.yaml task option.
GLOBAL_TASK_OPTIONS = {"task_acks_late": "acks_late", "task_reject_on_worker_lost": "reject_on_worker_lost",
                       "task_ignore_result": "ignore_result", "task_default_rate_limit": "rate_limit",
                       "task_default_priority": "priority"}
# Setting families that belong to a Celery backend or transport amqtask does not use.
BACKEND_PREFIXES = ("redis_", "database_", "cache_", "mongodb_", "cassandra_", "s3_", "azureblockblob_",
                    "arangodb_", "couchbase_", "cosmosdbsql_", "elasticsearch_", "riak_", "gcs_", "consul_",
                    "sqlalchemy_", "filesystem_")
# Untranslated settings whose absence changes what amqtask does (config_from_object refuses them).
BEHAVIOUR = {
    "task_protocol": "amqtask speaks Celery's message protocol 2 only",
    "worker_direct": "tasks sent to a worker's own queue ({hostname}.dq2) would not be consumed",
    "worker_disable_rate_limits": "amqtask applies rate limits; Celery's workers ignored them",
}
# Untranslated settings, with the reason said once.
REASONS = {
    "task_track_started": "pass track_started=True to @app.task (a decorator option in amqtask)",
    "task_publish_retry_policy": "amqtask retries a publish only when the connection dropped (broker.publish_retries)",
    "task_acks_on_failure_or_timeout": "amqtask dead-letters a task's final failure (with the reason) and then "
                                       "acknowledges it",
    "broker_pool_limit": "amqtask keeps one connection per App, shared by threads",
    "broker_connection_retry": "amqtask reconnects on its own (publishers retry broker.publish_retries times, "
                               "workers until they stop)",
    "broker_connection_retry_on_startup": "amqtask workers fail at start when no broker answers "
                                          "(broker.connect_timeout), and reconnect afterwards",
    "broker_connection_max_retries": "see broker.connect_timeout and broker.publish_retries",
    "broker_failover_strategy": "amqtask tries failover URLs in order",
    "result_persistent": "amqtask's rpc results are plain messages in a per-client reply queue",
    "enable_utc": "amqtask's messages always carry times in UTC",
    "worker_send_task_events": "task events are not part of amqtask's worker today",
    "beat_scheduler": "amqtask's schedules live in routing.yaml",
    "beat_schedule_filename": "amqtask's schedules live in routing.yaml",
}


def translate_broker(run: Run) -> None:
    _broker_url(run)
    _simple(run, "broker_heartbeat", run.model.broker, "heartbeat", lambda v: int(round(float(v))), "broker.heartbeat")
    _simple(run, "broker_connection_timeout", run.model.broker, "connect_timeout", float, "broker.connect_timeout")
    _tls(run)
    _transport_options(run)
    publish = run.take("task_publish_retry")
    policy = run.take("task_publish_retry_policy")
    if publish is not None and not publish.value:
        run.model.broker["publish_retries"] = (0, publish.written)
        run.changed(publish, "broker.publish_retries", "0: a publish whose connection dropped is not retried "
                                                       "(amqtask never retries a refused publish)")
    elif policy is not None and isinstance(policy.value, Mapping) and isinstance(policy.value.get("max_retries"), int):
        retries = policy.value["max_retries"]
        run.model.broker["publish_retries"] = (retries, policy.written)
        run.changed(policy, "broker.publish_retries", f"{retries}: amqtask retries a publish only when the "
                                                      "connection dropped, without Celery's interval policy")
    elif policy is not None:
        run.untranslated(policy, REASONS["task_publish_retry_policy"])


def _broker_url(run: Run) -> None:
    setting = run.take("broker_url")
    hosts = [run.take(k) for k in ("broker_host", "broker_port", "broker_user", "broker_password", "broker_vhost")]
    if setting is None and hosts[0] is None:
        return
    url = setting.value if setting is not None else _url_from_parts(*(h.value if h else None for h in hosts))
    written = setting.written if setting is not None else hosts[0].written  # type: ignore[union-attr]
    urls = [u for u in (url if isinstance(url, (list, tuple)) else str(url or "").split(";")) if str(u).strip()]
    schemes = {str(u).partition("://")[0].lower() for u in urls}
    shown = redact_url(";".join(map(str, urls)))
    if not urls or not schemes <= set(AMQP_SCHEMES):
        run.untranslated(written, f"{shown}: amqtask talks to RabbitMQ only; set broker.url (or "
                                  f"${BROKER_ENV}) to an amqp:// URL", behaviour=True)
        return
    text = ";".join(str(u).strip() for u in urls)
    try:
        parse_broker_urls(text)
    except BrokerURLError as exc:
        run.untranslated(written, f"{shown}: {exc}", behaviour=True)
        return
    safe = "$" not in text and "}" not in text
    run.model.broker["url"] = (Raw(f"${{{BROKER_ENV}:-{text}}}") if safe else text,
                               f"{written}; ${BROKER_ENV} overrides it" if safe else written)
    run.translated(written, "broker.url", shown)


def _url_from_parts(host: Any, port: Any, user: Any, password: Any, vhost: Any) -> str:
    creds = f"{user or 'guest'}:{password or 'guest'}@"
    return f"amqp://{creds}{host or 'localhost'}:{port or 5672}/{vhost or ''}"


def _tls(run: Run) -> None:
    setting = run.take("broker_use_ssl")
    if setting is None or not setting.value:
        return
    url = run.model.broker.get("url")
    if url is not None and "amqps://" not in str(url[0]):
        fixed = str(url[0]).replace("pyamqp://", "amqps://").replace("librabbitmq://", "amqps://")
        fixed = fixed.replace("amqp://", "amqps://")
        run.model.broker["url"] = (Raw(fixed) if isinstance(url[0], Raw) else fixed, url[1] + " (amqps: TLS)")
    if not isinstance(setting.value, Mapping):
        run.translated(setting, "broker.url", "TLS: the URL scheme is amqps://")
        return
    options = dict(setting.value)
    tls: dict[str, Any] = {k: options.pop(k) for k in ("ca_certs", "certfile", "keyfile", "server_hostname")
                           if k in options}
    if "cert_reqs" in options:
        tls["verify"] = options.pop("cert_reqs") != ssl.CERT_NONE
    run.model.broker["tls"] = (tls, setting.written)
    run.translated(setting, "broker.tls", "TLS: the URL scheme is amqps://, certificates in broker.tls")
    if options:
        run.untranslated(f"{setting.written}[{', '.join(sorted(options))}]", "no amqtask equivalent")


def _transport_options(run: Run) -> None:
    setting = run.take("broker_transport_options")
    if setting is None or not isinstance(setting.value, Mapping):
        if setting is not None:
            run.ignored(setting, "not a mapping")
        return
    for key, value in setting.value.items():
        name = f"{setting.written}[{key!r}]"
        if key == "confirm_publish":
            run.model.broker["confirm_publish"] = (bool(value), name)
            run.translated(name, "broker.confirm_publish", str(bool(value)).lower())
        elif key in ("max_retries", "interval_start", "interval_step", "interval_max"):
            run.untranslated(name, "connection retry policy: " + REASONS["broker_connection_retry"])
        else:
            run.ignored(name, "an option of another transport (Redis, SQS, ...): amqtask uses RabbitMQ only")


def translate_serialization(run: Run) -> None:
    serializer = run.take("task_serializer")
    if serializer is not None:
        if serializer.value in SERIALIZERS:
            run.model.defaults["serializer"] = (serializer.value, serializer.written)
            run.translated(serializer, "defaults.serializer", str(serializer.value))
        else:
            run.untranslated(serializer, f"serializer {serializer.value!r}: amqtask has {', '.join(SERIALIZERS)}",
                             behaviour=True)
    compression = run.take("task_compression")
    if compression is not None and compression.value:
        if compression.value in COMPRESSIONS:
            run.model.defaults["compression"] = (compression.value, compression.written)
            run.translated(compression, "defaults.compression", str(compression.value))
        else:
            run.untranslated(compression, f"compression {compression.value!r}: amqtask has "
                                          f"{', '.join(COMPRESSIONS)}; messages go uncompressed")
    _accept_content(run)
    mode = run.take("task_default_delivery_mode")
    if mode is not None:
        persistent = mode.value not in (1, "transient")
        run.model.defaults["persistent"] = (persistent, mode.written)
        run.translated(mode, "defaults.persistent", str(persistent).lower())


def _accept_content(run: Run) -> None:
    setting = run.take("accept_content")
    value = setting.value if setting is not None else run.defaults.get("accept_content")
    names = [CONTENT_TYPES.get(str(v), str(v)) for v in (value if isinstance(value, (list, tuple, set)) else [value])]
    known = [n for n in names if n in SERIALIZERS]
    unknown = [n for n in names if n not in SERIALIZERS]
    if known:
        run.model.broker["accept_content"] = (known, setting.written if setting else "Celery's default accept_content")
    if setting is None:
        run.implicit("accept_content", "broker.accept_content",
                     f"{known}: Celery's workers accept only these by default; amqtask's default adds more")
    else:
        run.translated(setting, "broker.accept_content", str(known))
    if unknown:
        run.untranslated(setting.written if setting else "accept_content",
                         f"content types {unknown} have no amqtask serializer", behaviour=True)
    serializer = run.peek("task_serializer")
    if serializer in SERIALIZERS and known and serializer not in known:
        run.problem(f"task_serializer {serializer!r} is not in accept_content {known}: Celery's workers refuse "
                    "these tasks (kept as is; amqtask's workers dead-letter them the same way)")


def translate_task_options(run: Run) -> dict[str, Any]:
    """Options Celery applies to every task; they go on every route and a final
    catch-all route, under `options`."""
    options: dict[str, Any] = {}
    for key, option in GLOBAL_TASK_OPTIONS.items():
        setting = run.take(key)
        if setting is None or setting.value is None:
            continue
        value = setting.value
        if option == "rate_limit":
            value = str(value)
            if not RATE_LIMIT.match(value):
                run.untranslated(setting, f"rate limit {value!r} is not N, N/s, N/m or N/h")
                continue
        options[option] = value
        run.translated(setting, f"routes[*].options.{option}", f"{value!r} on every route")
    if "acks_late" not in options:
        run.changed("task_acks_late", "", "not set: Celery acknowledges a task when a worker receives it; amqtask "
                                          "acknowledges it after it has run (late acks), so a task whose worker dies "
                                          "mid-run runs again. For Celery's behaviour set acks_late: false")
    for key, target in (("task_time_limit", "time_limit"), ("task_soft_time_limit", "soft_time_limit")):
        _simple(run, key, run.model.worker, target, float, f"worker.{target}")
    return options


def translate_worker(run: Run) -> None:
    concurrency = run.take("worker_concurrency")
    if concurrency is not None:
        if isinstance(concurrency.value, int) and not isinstance(concurrency.value, bool) and concurrency.value > 0:
            run.model.worker["concurrency"] = (concurrency.value, concurrency.written)
            run.translated(concurrency, "worker.concurrency", str(concurrency.value))
        else:
            run.translated(concurrency, "worker.concurrency", f"{concurrency.value!r}: the number of CPUs, as "
                                                              "amqtask's default")
    prefetch = run.take("worker_prefetch_multiplier")
    if prefetch is not None and isinstance(prefetch.value, int) and prefetch.value >= 0:
        run.model.worker["prefetch_multiplier"] = (prefetch.value, prefetch.written)
        run.changed(prefetch, "worker.prefetch_multiplier",
                    f"{prefetch.value}: Celery's window (concurrency x multiplier) is shared by all the queues a "
                    "worker consumes; amqtask's is per consumed queue (per-consumer QoS, so quorum queues work)")
    for key in ("worker_max_tasks_per_child", "worker_max_memory_per_child"):
        _simple(run, key, run.model.worker, key.removeprefix("worker_"), int, f"worker.{key.removeprefix('worker_')}",
                positive=True)
    pool = run.take("worker_pool")
    if pool is None:
        run.model.worker["pool"] = ("prefork", "Celery's default pool")
        run.implicit("worker_pool", "worker.pool", "prefork: Celery's default, each task in a forked child; "
                                                   "amqtask's own default (no pool line) runs tasks in threads "
                                                   "of one consuming process per CPU, which drains faster")
    else:
        name = str(pool.value).rpartition(":")[2].lower() if pool.value else "prefork"
        if name in POOLS:
            run.model.worker["pool"] = (POOLS[name], pool.written)
            run.translated(pool, "worker.pool", POOLS[name])
        else:
            run.untranslated(pool, f"pool {pool.value!r}: amqtask has prefork, threads, solo, and asyncio for "
                                   "async def tasks (the usual replacement for eventlet and gevent)")


def translate_results(run: Run, *, backend_key: bool) -> None:
    backend = run.take("result_backend")
    if backend is None:
        run.model.results["enabled"] = (False, "Celery's default: no result backend")
        run.implicit("result_backend", "results.enabled", "false: Celery keeps no results without a backend")
    else:
        _result_backend(run, backend, backend_key=backend_key)
    _simple(run, "result_serializer", run.model.results, "serializer", str, "results.serializer",
            choices=SERIALIZERS)
    expires = run.take("result_expires")
    if expires is not None and expires.value is not None:
        seconds = expires.value.total_seconds() if isinstance(expires.value, dt.timedelta) else float(expires.value)
        if seconds > 0:
            run.model.results["expires"] = (duration(seconds), expires.written)
            if "backend" in run.model.results:  # Redis or PostgreSQL: stored results expire, as in Celery
                run.translated(expires, "results.expires", duration(seconds))
                return
            run.changed(expires, "results.expires", f"{duration(seconds)}: Celery keeps stored results this long; "
                                                    "amqtask deletes a client's reply queue (and the results in it) "
                                                    "after it has been unused this long")


def _result_backend(run: Run, backend: Setting, *, backend_key: bool) -> None:
    url = str(backend.value or "disabled")
    scheme = url.partition("://")[0].lower()
    results = run.model.results
    if scheme == "disabled":
        results["enabled"] = (False, backend.written)
        run.translated(backend, "results.enabled", "false")
    elif scheme in ("rpc", "amqp", "pyamqp"):
        results["enabled"] = (True, backend.written)
        detail = "results travel back over RabbitMQ to the sender, as Celery's rpc backend"
        if scheme == "rpc":
            run.translated(backend, "results.enabled", detail)
        else:
            run.changed(backend, "results.enabled", f"{detail}; Celery 5 removed the amqp backend (rpc:// replaced "
                                                    "it): only the process that sent a task reads its result")
    elif backend_key:
        results["enabled"] = (True, backend.written)
        results["backend"] = (url, backend.written)
        run.translated(backend, "results.backend", redact_url(url))
    else:
        run.untranslated(backend, f"{redact_url(url)}: this amqtask keeps results in RabbitMQ reply queues only "
                                  "(rpc): only the sender can read a result", behaviour=True)


def translate_beat(run: Run, *, schedules: bool, timezone: bool) -> None:
    beat = run.take("beat_schedule")
    if beat is not None and beat.value:
        result = translate_schedules(beat.value)
        for refused in result.refused:
            run.untranslated(f"{beat.written}[{refused.name!r}]", refused.reason)
        for entry in result.entries:
            summary = ", ".join(f"{k} {v}" for k, v in entry.fields.items())
            name = f"{beat.written}[{entry.name!r}]"
            notes = "; ".join(entry.notes)
            if schedules and notes:
                run.model.schedules.append(entry)
                run.changed(name, f"schedules.{entry.name}", f"{summary} ({notes})")
            elif schedules:
                run.model.schedules.append(entry)
                run.translated(name, f"schedules.{entry.name}", summary)
            else:
                run.untranslated(name, f"{summary}: this amqtask's routing.yaml has no schedules section yet")
    tz = run.take("timezone")
    if tz is not None and tz.value:
        if timezone:
            run.model.timezone = (str(tz.value), tz.written)
            run.translated(tz, "timezone", str(tz.value))
        else:
            run.untranslated(tz, f"{tz.value}: this amqtask's routing.yaml has no timezone yet")


def translate_app_options(run: Run) -> None:
    """Settings of the App rather than of routing.yaml: config_from_object applies them
    (their report entries target `App.<name>`)."""
    for key in ("task_always_eager", "task_eager_propagates"):
        setting = run.take(key)
        if setting is not None:
            run.app_options[key] = bool(setting.value)
            run.untranslated(setting, f"an App option, not routing.yaml: App({key}={bool(setting.value)}); "
                                      "config_from_object applies it", target=f"App.{key}")
    modules: list[str] = []
    for key in ("imports", "include"):
        setting = run.take(key)
        if setting is not None and setting.value:
            value = setting.value
            found = [value] if isinstance(value, str) else [str(m) for m in value]
            modules.extend(found)
            run.untranslated(setting, f"modules {found}: name them in App(include=[...]) or -A; config_from_object "
                                      "makes the worker import them at start", target="App.imports")
    if modules:
        run.app_options["imports"] = tuple(modules)


def translate_leftovers(run: Run) -> None:
    for setting in run.untaken():
        key = setting.key
        if key in BEHAVIOUR:
            if key == "task_protocol" and setting.value == 2:
                run.translated(setting, "", "protocol 2 is what amqtask speaks")
            elif not setting.value:
                run.ignored(setting, "off, as in amqtask")
            else:
                run.untranslated(setting, BEHAVIOUR[key], behaviour=True)
        elif key.startswith("security_"):
            run.untranslated(setting, "message signing has no amqtask equivalent: Celery workers expecting signed "
                                      "messages refuse amqtask's", behaviour=bool(setting.value))
        elif key.startswith(BACKEND_PREFIXES):
            run.ignored(setting, "a setting of a Celery backend or transport amqtask does not use")
        elif run.is_default(setting):
            run.ignored(setting, "the same as Celery's default")
        else:
            run.untranslated(setting, REASONS.get(key, "no amqtask equivalent"))


def _simple(run: Run, key: str, section: dict[str, tuple[Any, str]], target: str, convert: Any, path: str, *,
            positive: bool = False, choices: tuple | None = None) -> None:
    setting = run.take(key)
    if setting is None or setting.value is None:
        return
    try:
        value = convert(setting.value)
    except (TypeError, ValueError):
        run.untranslated(setting, f"{setting.value!r} is not a valid value")
        return
    if (positive and value <= 0) or (choices is not None and value not in choices):
        run.untranslated(setting, f"{setting.value!r} has no amqtask equivalent")
        return
    section[target] = (value, setting.written)
    run.translated(setting, path, repr(value))
