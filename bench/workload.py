"""One benchmark workload, run in its own process: `python -m bench.workload NAME --n N`.
Prints one JSON line. bench/run.py runs them all, repeats, and writes the report."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("AMQTASK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
WORKLOADS: dict[str, Callable[[int], dict[str, Any]]] = {}


def workload(name: str) -> Callable:
    def register(fn: Callable[[int], dict[str, Any]]) -> Callable:
        WORKLOADS[name] = fn
        return fn
    return register


class Env:
    """A unique queue, a config for it, a directory for marks; cleaned up on exit."""

    def __init__(self, system: str, confirm: bool = True) -> None:
        self.queue = f"bench-{system}-{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix="amqtask-bench-"))
        self.config = self.dir / "routing.yaml"
        self.config.write_text(
            f"broker:\n  url: {BROKER}\n  confirm_publish: {'true' if confirm else 'false'}\n"
            f"defaults:\n  queue: {self.queue}\nqueues:\n  {self.queue}: {{}}\n"
            "results: {backend: 'rpc://'}\n"
        )
        self.env = {**os.environ, "BENCH_CONFIG": str(self.config), "BENCH_QUEUE": self.queue,
                    "BENCH_BROKER_URL": BROKER, "BENCH_MARK_DIR": str(self.dir), "PYTHONPATH": str(ROOT),
                    "BENCH_CONFIRM": "1" if confirm else "0"}
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("BENCH_")})
        self.processes: list[subprocess.Popen] = []

    def channel(self):
        import pika

        from amqtask.amqp.params import pika_parameters
        from amqtask.brokerurl import parse_broker_urls
        from amqtask.settings import BrokerSettings

        return pika.BlockingConnection(pika_parameters(BrokerSettings(urls=parse_broker_urls(BROKER)))).channel()

    def count(self) -> int:
        ch = self.channel()
        try:
            return ch.queue_declare(self.queue, passive=True).method.message_count
        finally:
            ch.connection.close()

    def spawn(self, command: list[str], **env: str) -> subprocess.Popen:
        process = subprocess.Popen(command, env={**self.env, **env}, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=open(self.dir / "worker.log", "a"), start_new_session=True)
        self.processes.append(process)
        return process

    def mark_time(self, name: str, timeout: float = 600) -> float:
        path = self.dir / name
        deadline = time.monotonic() + timeout
        while not path.exists() or not path.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} mark; see {self.dir / 'worker.log'}")
            time.sleep(0.005)
        return float(path.read_text())

    def close(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        ch = self.channel()
        for name in (self.queue, f"{self.queue}.dead", f"{self.queue}.DQ", f"{self.queue}.XQ", *self.reply_queues()):
            ch.queue_delete(name)
        if "bench.apps.amqtask_app" in sys.modules:
            sys.modules["bench.apps.amqtask_app"].app.close()  # deletes its reply queue
        ch.exchange_delete(self.queue)
        ch.connection.close()


    @staticmethod
    def reply_queues() -> list[str]:
        """Celery's rpc reply queue, which outlives its client when nothing consumed it."""
        celery_app = sys.modules.get("bench.apps.celery_app")
        return [celery_app.app.backend.oid] if celery_app is not None else []


def rss_kib(pid: int) -> int:
    """Resident memory of a process tree: the worker, its processes and their pool
    children (an amqtask supervisor's prefork children are its grandchildren)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, parent, _ in rows:
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(rss for p, _, rss in rows if p in tree)


def rate(n: int, seconds: float) -> dict[str, Any]:
    return {"n": n, "seconds": round(seconds, 3), "per_second": round(n / seconds, 1)}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5) * 1000, 3), "p90_ms": round(pick(0.9) * 1000, 3),
            "p99_ms": round(pick(0.99) * 1000, 3)}


# -- publish -----------------------------------------------------------------------------


def amqtask_app(env: Env):
    from bench.apps import amqtask_app

    assert amqtask_app.app.publisher.transport.declare(amqtask_app.app.settings.topology) == []
    return amqtask_app


@workload("publish/amqtask delay() confirmed")
def publish_amqtask(n: int) -> dict:
    env = Env("amq")
    try:
        mod = amqtask_app(env)
        mod.add.delay(0, 0)
        latencies = []
        start = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            mod.add.delay(i, i)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        assert env.count() == n + 1
        return {**rate(n, elapsed), **percentiles(latencies)}
    finally:
        env.close()


@workload("publish/amqtask delay() unconfirmed")
def publish_amqtask_unconfirmed(n: int) -> dict:
    env = Env("amq", confirm=False)
    try:
        mod = amqtask_app(env)
        mod.add.delay(0, 0)
        start = time.perf_counter()
        for i in range(n):
            mod.add.delay(i, i)
        return rate(n, time.perf_counter() - start)
    finally:
        env.close()


@workload("publish/amqtask bulk (asyncio, confirmed)")
def publish_amqtask_bulk(n: int) -> dict:
    env = Env("amq")
    try:
        mod = amqtask_app(env)
        mod.add.delay(0, 0)  # declares the reply queue outside the timing

        async def go() -> float:
            await mod.add.delay_async(0, 0)
            start = time.perf_counter()
            for base in range(0, n, 500):
                await asyncio.gather(*(mod.add.delay_async(i, i) for i in range(base, min(n, base + 500))))
            elapsed = time.perf_counter() - start
            await mod.app.aclose()
            return elapsed

        return rate(n, asyncio.run(go()))
    finally:
        env.close()


def _celery_publish(n: int, confirm: bool) -> dict:
    env = Env("cel", confirm=confirm)
    try:
        from bench.apps import celery_app

        celery_app.add.apply_async((0, 0))
        start = time.perf_counter()
        for i in range(n):
            celery_app.add.apply_async((i, i))
        return rate(n, time.perf_counter() - start)
    finally:
        env.close()


@workload("publish/celery apply_async, confirms off")
def publish_celery(n: int) -> dict:
    return _celery_publish(n, confirm=False)


@workload("publish/celery apply_async, confirms on")
def publish_celery_confirmed(n: int) -> dict:
    return _celery_publish(n, confirm=True)


@workload("publish/dramatiq send, confirms off")
def publish_dramatiq(n: int) -> dict:
    env = Env("dra", confirm=False)
    try:
        from bench.apps import dramatiq_app

        dramatiq_app.noop.send(0)
        start = time.perf_counter()
        for i in range(n):
            dramatiq_app.noop.send(i)
        return rate(n, time.perf_counter() - start)
    finally:
        env.close()


# -- drain ---------------------------------------------------------------------------------


def fill_amqtask(env: Env, n: int, task: str = "bench.noop") -> None:
    """Queue mark(start), n-2 no-ops, mark(end) in amqtask's wire format, fast."""
    import pika

    from amqtask.amqp.blocking import wire_properties
    from amqtask.protocol import TaskMessage, encode_task
    from amqtask.serializers import Codec

    amqtask_app(env)
    codec = Codec()
    ch = env.channel()
    ch.confirm_delivery()
    messages = [TaskMessage(task="bench.mark", args=("start",))]
    messages += [TaskMessage(task=task, args=(i,)) for i in range(n - 2)]
    messages += [TaskMessage(task="bench.mark", args=("end",))]
    for m in messages:
        wire = encode_task(m, codec)
        ch.basic_publish("", env.queue, wire.body, wire_properties(wire))
    ch.connection.close()
    del pika


def fill_celery(env: Env, n: int) -> None:
    from bench.apps import celery_app

    celery_app.mark_task.apply_async(("start",))
    for i in range(n - 2):
        celery_app.noop.apply_async((i,))
    celery_app.mark_task.apply_async(("end",))


def fill_dramatiq(env: Env, n: int) -> None:
    from bench.apps import dramatiq_app

    dramatiq_app.mark_task.send("start")
    for i in range(n - 2):
        dramatiq_app.noop.send(i)
    dramatiq_app.mark_task.send("end")


def drain(system: str, n: int, command: list[str], fill: Callable[[Env, int], None], **env_vars: str) -> dict:
    env = Env(system, confirm=False)
    try:
        fill(env, n)
        deadline = time.monotonic() + 60
        while env.count() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        spawned = time.time()
        worker = env.spawn(command, **env_vars)
        start = env.mark_time("start")
        end = env.mark_time("end")
        result = {**rate(n, end - start), "spawn_to_first_task_s": round(start - spawned, 3),
                  "rss_after_kib": rss_kib(worker.pid)}
        return result
    finally:
        env.close()


AMQTASK_WORKER = [sys.executable, "-m", "amqtask.cli", "worker", "-A", "bench.apps.amqtask_app", "-l", "WARNING"]
CELERY_WORKER = [sys.executable, "-m", "celery", "-A", "bench.apps.celery_app", "worker", "-l", "WARNING",
                 "--without-mingle", "--without-gossip", "--without-heartbeat"]
DRAMATIQ_WORKER = [sys.executable, "-m", "dramatiq", "bench.apps.dramatiq_app"]


# Each system as a user starts it, with no pool or concurrency flags (the bench app's config sets none).
workload("drain/amqtask default (no pool flags)")(lambda n: drain("amq", n, AMQTASK_WORKER, fill_amqtask))
workload("drain/celery default (no pool flags)")(lambda n: drain("cel", n, CELERY_WORKER, fill_celery))
workload("drain/dramatiq default (no flags)")(lambda n: drain("dra", n, DRAMATIQ_WORKER, fill_dramatiq))
# Late acks and a prefetch of one task per slot on both sides (amqtask's acks are late by default).
workload("drain/amqtask reliable: prefetch-multiplier 1 (default pool)")(
    lambda n: drain("amq", n, AMQTASK_WORKER + ["--prefetch-multiplier", "1"], fill_amqtask))
workload("drain/amqtask reliable: prefetch-multiplier 1, prefork -c 2")(
    lambda n: drain("amq", n, AMQTASK_WORKER + ["-P", "prefork", "-c", "2", "--prefetch-multiplier", "1"],
                    fill_amqtask))
workload("drain/celery threads -c 4")(lambda n: drain("cel", n, CELERY_WORKER + ["-P", "threads", "-c", "4"],
                                                      fill_celery))

# Each pool as a user starts it: -c is the concurrency in all; amqtask spreads it over one
# process per CPU (solo: one process).
for _pool, _flags in (("prefork -c 2", ["-P", "prefork", "-c", "2"]), ("threads -c 4", ["-P", "threads", "-c", "4"]),
                      ("asyncio -c 8", ["-P", "asyncio", "-c", "8"]), ("solo", ["-P", "solo"]),
                      ("threads -c 16", ["-P", "threads", "-c", "16"])):
    workload(f"drain/amqtask {_pool}")(
        lambda n, f=_flags: drain("amq", n, AMQTASK_WORKER + f, fill_amqtask))
# The asyncio pool exists for coroutines; with `async def` tasks it needs no thread per task.
workload("drain/amqtask asyncio -c 8, async def task")(
    lambda n: drain("amq", n, AMQTASK_WORKER + ["-P", "asyncio", "-c", "8"],
                    lambda env, n: fill_amqtask(env, n, task="bench.anoop")))
# One consuming process, against the raw client's ceiling in one process.
workload("drain/amqtask one process: --processes 1 -P threads -c 4")(
    lambda n: drain("amq", n, AMQTASK_WORKER + ["--processes", "1", "-P", "threads", "-c", "4"], fill_amqtask))
workload("drain/amqtask one process: --processes 1 -P asyncio -c 8, async def task")(
    lambda n: drain("amq", n, AMQTASK_WORKER + ["--processes", "1", "-P", "asyncio", "-c", "8"],
                    lambda env, n: fill_amqtask(env, n, task="bench.anoop")))
workload("drain/celery prefork -c 2 (default)")(
    lambda n: drain("cel", n, CELERY_WORKER + ["-P", "prefork", "-c", "2"], fill_celery))
workload("drain/celery reliable: acks_late, prefetch 1, -Ofair, prefork -c 2")(
    lambda n: drain("cel", n, CELERY_WORKER + ["-P", "prefork", "-c", "2", "-O", "fair"], fill_celery,
                    BENCH_ACKS_LATE="1", BENCH_PREFETCH_MULTIPLIER="1"))
workload("drain/celery solo")(lambda n: drain("cel", n, CELERY_WORKER + ["-P", "solo"], fill_celery))
workload("drain/dramatiq -p 1 -t 4")(lambda n: drain("dra", n, DRAMATIQ_WORKER + ["-p", "1", "-t", "4"], fill_dramatiq))
workload("drain/dramatiq -p 2 -t 4")(lambda n: drain("dra", n, DRAMATIQ_WORKER + ["-p", "2", "-t", "4"], fill_dramatiq))


# -- round trip ------------------------------------------------------------------------------


def _wait_started(env: Env, send_mark: Callable[[], Any]) -> None:
    send_mark()
    env.mark_time("ready", timeout=60)


@workload("roundtrip/amqtask delay().get(), solo worker")
def roundtrip_amqtask(n: int) -> dict:
    env = Env("amq")
    try:
        mod = amqtask_app(env)
        env.spawn(AMQTASK_WORKER + ["-P", "solo"])
        _wait_started(env, lambda: mod.mark_task.delay("ready"))
        samples = []
        for _ in range(min(n, 500)):
            t = time.perf_counter()
            assert mod.add.delay(1, 2).get(timeout=10) == 3
            samples.append(time.perf_counter() - t)
        mod.app.close()
        return {"n": len(samples), **percentiles(samples)}
    finally:
        env.close()


@workload("roundtrip/celery delay().get() rpc, solo worker")
def roundtrip_celery(n: int) -> dict:
    env = Env("cel", confirm=False)
    try:
        from bench.apps import celery_app

        env.spawn(CELERY_WORKER + ["-P", "solo"])
        _wait_started(env, lambda: celery_app.mark_task.delay("ready"))
        samples = []
        for _ in range(min(n, 500)):
            t = time.perf_counter()
            assert celery_app.add.delay(1, 2).get(timeout=10) == 3
            samples.append(time.perf_counter() - t)
        return {"n": len(samples), **percentiles(samples)}
    finally:
        env.close()


# -- ceiling -----------------------------------------------------------------------------------

BODY = b'[[1, 1], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


@workload("ceiling/pika publish, confirms off")
def ceiling_publish(n: int) -> dict:
    import pika

    env = Env("raw")
    try:
        ch = env.channel()
        ch.queue_declare(env.queue)
        props = pika.BasicProperties(content_type="application/json", headers={"task": "bench.noop", "id": "x"})
        start = time.perf_counter()
        for _ in range(n):
            ch.basic_publish("", env.queue, BODY, props)
        ch.connection.process_data_events(0)
        return rate(n, time.perf_counter() - start)
    finally:
        env.close()


@workload("ceiling/pika publish, one confirm in flight")
def ceiling_publish_confirmed(n: int) -> dict:
    import pika

    env = Env("raw")
    try:
        ch = env.channel()
        ch.queue_declare(env.queue)
        ch.confirm_delivery()
        props = pika.BasicProperties(content_type="application/json", headers={"task": "bench.noop", "id": "x"})
        start = time.perf_counter()
        for _ in range(n):
            ch.basic_publish("", env.queue, BODY, props)
        return rate(n, time.perf_counter() - start)
    finally:
        env.close()


def _aio(coro_fn: Callable, env: Env, n: int) -> float:
    import aio_pika

    from amqtask.amqp.connection import amqp_url
    from amqtask.brokerurl import parse_broker_urls
    from amqtask.settings import BrokerSettings

    async def go() -> float:
        conn = await aio_pika.connect(amqp_url(parse_broker_urls(BROKER)[0], BrokerSettings()))
        try:
            return await coro_fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


@workload("ceiling/aio-pika publish, 200 confirms in flight")
def ceiling_aio_publish(n: int) -> dict:
    import aio_pika

    env = Env("raw")
    try:
        async def run(conn) -> float:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue(env.queue)
            start = time.perf_counter()
            for base in range(0, n, 200):
                await asyncio.gather(*(ch.default_exchange.publish(aio_pika.Message(BODY), env.queue)
                                       for _ in range(base, min(n, base + 200))))
            return time.perf_counter() - start

        return rate(n, _aio(run, env, n))
    finally:
        env.close()


def _ceiling_consume(n: int, multiple: int) -> dict:
    env = Env("raw")
    try:
        ch = env.channel()
        ch.queue_declare(env.queue)
        for _ in range(n):
            ch.basic_publish("", env.queue, BODY)
        ch.connection.close()
        while env.count() < n:
            time.sleep(0.05)

        async def run(conn) -> float:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=200)
            queue = await ch.declare_queue(env.queue)
            done = asyncio.Event()
            seen = 0
            start = 0.0

            async def on_message(message) -> None:
                nonlocal seen, start
                if seen == 0:
                    start = time.perf_counter()
                seen += 1
                if multiple == 1 or seen % multiple == 0 or seen == n:
                    await message.ack(multiple=multiple > 1)
                if seen == n:
                    done.set()

            await queue.consume(on_message)
            await done.wait()
            return time.perf_counter() - start

        return rate(n, _aio(run, env, n))
    finally:
        env.close()


@workload("ceiling/aio-pika consume, prefetch 200, ack each")
def ceiling_consume(n: int) -> dict:
    return _ceiling_consume(n, 1)


@workload("ceiling/aio-pika consume, prefetch 200, ack multiple every 100")
def ceiling_consume_multiple(n: int) -> dict:
    return _ceiling_consume(n, 100)


# -- memory and start-up -------------------------------------------------------------------------


def idle(system: str, command: list[str], send_mark: Callable[[Env], None], **env_vars: str) -> dict:
    env = Env(system, confirm=False)
    try:
        send_mark(env)
        spawned = time.time()
        worker = env.spawn(command, **env_vars)
        first = env.mark_time("ready", timeout=60)
        time.sleep(3)
        return {"spawn_to_first_task_s": round(first - spawned, 3), "idle_rss_kib": rss_kib(worker.pid)}
    finally:
        env.close()


def _mark_amqtask(env: Env) -> None:
    amqtask_app(env).mark_task.delay("ready")


def _mark_celery(env: Env) -> None:
    from bench.apps import celery_app

    celery_app.mark_task.delay("ready")


def _mark_dramatiq(env: Env) -> None:
    from bench.apps import dramatiq_app

    dramatiq_app.mark_task.send("ready")


workload("memory/amqtask default (no pool flags)")(lambda n: idle("amq", AMQTASK_WORKER, _mark_amqtask))
workload("memory/celery default (no pool flags)")(lambda n: idle("cel", CELERY_WORKER, _mark_celery))
workload("memory/amqtask prefork -c 2")(lambda n: idle("amq", AMQTASK_WORKER + ["-P", "prefork", "-c", "2"],
                                                        _mark_amqtask))
workload("memory/celery prefork -c 2")(lambda n: idle("cel", CELERY_WORKER + ["-P", "prefork", "-c", "2"],
                                                       _mark_celery))
workload("memory/dramatiq -p 1 -t 4")(lambda n: idle("dra", DRAMATIQ_WORKER + ["-p", "1", "-t", "4"],
                                                      _mark_dramatiq))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", nargs="?", help="workload name (omit with --list)")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list or not args.name:
        print("\n".join(WORKLOADS))
        return
    result = WORKLOADS[args.name](args.n)
    print(json.dumps({"workload": args.name, **result}))


if __name__ == "__main__":
    main()
