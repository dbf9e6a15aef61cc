"""Load on one RabbitMQ node against the 3-node cluster (integration/cluster.py).

Three quorum queues; three publisher processes (one per queue, confirmed delay()
calls) and three `amqtask worker --processes 2 -P threads -c 4` commands, all
running at once. On one node every client connects to it; on the cluster each
queue's leader is on a different node and each publisher and worker connects first
to a different node. Reported: throughput (tasks executed per second, first publish
to last execution) and p50/p99 latency (publish to execution). Then the cost of the
quorum delay cascade against the classic one: tasks parked for one second.

    python -m bench.cluster [--tasks N]     # prints a Markdown table; see docs/cluster.md
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUEUES = 3


def topology(prefix: str, url: str, queue_type: str) -> str:
    queues = "".join(f"""\
  {prefix}.q{i}:
    queue_type: {queue_type}
    bindings:
      - {{exchange: {prefix}.x, routing_key: k{i}}}
""" for i in range(QUEUES))
    return f"""\
broker:
  url: ${{BENCH_BROKER_URL:-{url}}}
  publish_timeout: 30
defaults:
  exchange: {prefix}.x
  routing_key: k0
exchanges:
  {prefix}.x: {{type: direct}}
queues:
{queues}"""


def publisher(config: str, queue: int, count: int, countdown: float, out: str) -> None:
    os.environ["WORKER_TEST_CONFIG"] = config
    from amqtask import App

    app = App("bench-publisher", config=config)
    for i in range(count):
        options = {"countdown": countdown} if countdown else {}
        app.send_task("t.mark", (time.time() + countdown, 0.0), task_id=f"{queue}-{i}-{uuid.uuid4().hex[:6]}",
                      ignore_result=True, routing_key=f"k{queue}", **options)
    app.close()
    Path(out).write_text("done")


def rotated(urls: list[str], first: int) -> str:
    return ";".join(urls[first:] + urls[:first])


def declare_on(url: str, queue: str, queue_type: str) -> None:
    """Declare a queue through one node: its leader (a classic queue's process) goes there."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url[:-1] + "%2F"))
    connection.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
    connection.close()


def run(name: str, urls: list[str], queue_type: str, tasks: int, countdown: float = 0.0) -> dict:
    """One measured run: `tasks` per queue, publishers and workers spread over `urls`."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="amqtask-bench-cluster-"))
    config = work / "routing.yaml"
    config.write_text(topology(prefix, ";".join(urls), queue_type))
    record = work / "record.jsonl"
    record.touch()
    base_env = {**os.environ, "WORKER_TEST_CONFIG": str(config), "WORKER_TEST_RECORD": str(record),
                "PYTHONPATH": str(ROOT)}
    for i in range(QUEUES):  # each queue through its own node, so the leaders are spread
        declare_on(urls[i % len(urls)], f"{prefix}.q{i}", queue_type)
    workers = []
    for i in range(QUEUES):
        env = {**base_env, "BENCH_BROKER_URL": rotated(urls, i % len(urls))}
        log = open(work / f"worker{i}.log", "w")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "amqtask.cli", "worker", "-A", "integration.worker_app", "-Q",
             ",".join(f"{prefix}.q{(i + j) % QUEUES}" for j in range(QUEUES)), "--processes", "2", "-P", "threads",
             "-c", "4", "-n", f"{prefix}w{i}@localhost", "-l", "WARNING"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    time.sleep(8)  # the workers start consuming
    started = time.time()
    procs = []
    for i in range(QUEUES):
        os.environ["BENCH_BROKER_URL"] = rotated(urls, i % len(urls))
        p = multiprocessing.get_context("spawn").Process(
            target=publisher, args=(str(config), i, tasks, countdown, str(work / f"pub{i}.done")))
        p.start()
        procs.append(p)
    os.environ.pop("BENCH_BROKER_URL", None)
    for p in procs:
        p.join()
    published = time.time() - started
    total = tasks * QUEUES
    deadline = time.time() + 600
    rows: list[dict] = []
    while time.time() < deadline:
        rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        if len({r["id"] for r in rows}) >= total:
            break
        time.sleep(0.5)
    for w in workers:
        os.killpg(w.pid, signal.SIGTERM)
    for w in workers:
        try:
            w.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait()
    executed = {r["id"] for r in rows}
    latencies = sorted(r["t"] - r["seq"] for r in rows)
    last = max(r["t"] for r in rows)
    cleanup(urls[0], [f"{prefix}.q{i}" for i in range(QUEUES)] + [f"{prefix}.q{i}.dead" for i in range(QUEUES)],
            [f"{prefix}.x"])
    return {"setup": name, "queue_type": queue_type, "tasks": total, "executed": len(executed),
            "publish_s": round(published, 1), "throughput": round(total / (last - started)),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)}


def cleanup(url: str, queues: list[str], exchanges: list[str]) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url[:-1] + "%2F"))
    channel = connection.channel()
    for q in queues:
        channel.queue_delete(q)
    for x in exchanges:
        channel.exchange_delete(x)
    connection.close()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from integration.cluster import Cluster
    from scripts.services import LocalRabbitMQ, free_port

    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per queue (3 queues)")
    args = parser.parse_args()
    results = []
    single = LocalRabbitMQ(free_port())
    single.start()
    try:
        one = [f"amqp://guest:guest@127.0.0.1:{single.port}//"]
        results.append(run("1 node", one, "classic", args.tasks))
        results.append(run("1 node", one, "quorum", args.tasks))
        results.append(run("1 node, countdown 1 s", one, "classic", args.tasks // 3, countdown=1.0))
        results.append(run("1 node, countdown 1 s", one, "quorum", args.tasks // 3, countdown=1.0))
    finally:
        single.stop()
    cluster = Cluster()
    started_here = not cluster.up()
    cluster.start()
    try:
        urls = [node.url for node in cluster.nodes]
        results.append(run("3 nodes", urls, "quorum", args.tasks))
        results.append(run("3 nodes, countdown 1 s", urls, "quorum", args.tasks // 3, countdown=1.0))
    finally:
        if started_here:
            cluster.stop()
    columns = ["setup", "queue_type", "tasks", "executed", "publish_s", "throughput", "p50_ms", "p99_ms"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in results:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
