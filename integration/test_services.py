"""scripts/services.py for real: with nothing on the broker URL (an unused port, so
the shared broker is never touched), `make demo`'s command starts a private RabbitMQ
node, runs against it, and stops it; one it did not start is left alone."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scripts.services import free_port

from .conftest import ROOT, connect

needs_server = pytest.mark.skipif(shutil.which("rabbitmq-server") is None,  # CI has it
                                  reason="rabbitmq-server is not installed (CI has it): the local start cannot be tried")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def with_services(*command: str, url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RABBITMQ_NODENAME"}
    return subprocess.run([sys.executable, "-m", "scripts.services", "rabbitmq", "--", *command],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**env, "AMQTASK_BROKER_URL": url})


# After the demo, on the node it ran against: what is left (rabbitmqctl reaches the
# private node, whose name the script hands over).
DEMO_THEN_LIST = """
{python} examples/demo.py; status=$?
echo '== queues'; rabbitmqctl -q list_queues --no-table-headers name
echo '== exchanges'; rabbitmqctl -q list_exchanges --no-table-headers name
exit $status
"""


def listed(output: str, what: str) -> set[str]:
    section = output.split(f"== {what}\n", 1)[1].split("== ", 1)[0]
    return {line.strip() for line in section.splitlines() if line.strip()}


@needs_server
def test_demo_with_nothing_on_the_broker_url_starts_and_stops_its_own_broker():
    """On a broker of its own, the demo leaves routing.yaml's topology and the dead
    letter it shows, and nothing else it or its worker and beat declared: not the
    other dead-letter queues, neither delay cascade (invoices is a quorum queue: the
    worker declares amqtask.delay.q.* too), nor the beat's and revocations' queues."""
    from amqtask.topology.loader import load_settings

    port = free_port()
    run = with_services("sh", "-c", DEMO_THEN_LIST.format(python=sys.executable),
                        url=f"amqp://guest:guest@127.0.0.1:{port}//")
    logs = re.search(r"logs: (\S+), (\S+)", run.stdout)
    for log in logs.groups() if logs else ():
        Path(log).unlink(missing_ok=True)
    assert run.returncode == 0, run.stdout + run.stderr
    topology = load_settings(ROOT / "routing.yaml", environ={}).topology
    assert listed(run.stdout, "queues") == {*topology.queues, "default.dead"}
    left = {x for x in listed(run.stdout, "exchanges") if not x.startswith("amq.")}
    assert not {x for x in left if x.startswith("amqtask.")} and set(topology.exchanges) <= left
    assert f"nothing answers at 127.0.0.1:{port}; starting a private RabbitMQ (rabbitmq-server)" in run.stderr
    assert f"broker: amqp://guest:***@127.0.0.1:{port}/" in run.stdout
    assert run.stdout.count("SUCCESS") == 7  # six routed tasks and the result read by a second process
    assert "beat and worker stopped warmly (exit status 0, 0)" in run.stdout
    assert re.search(r"deleted what this run created and did not show: \d+ queues", run.stdout)
    assert "stopping the private RabbitMQ node started for this run" in run.stderr
    assert not listening(port)
    assert f"amqtask-{port}-" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


CHILD = textwrap.dedent("""
    import os, subprocess, pika
    params = pika.URLParameters(os.environ["AMQTASK_BROKER_URL"])
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.queue_declare("services-check")
    channel.basic_publish("", "services-check", b"hello")
    connection.close()
    # rabbitmqctl reaches the same node: the script hands over its name.
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", "tenant", "--no-table-headers", "name", "messages"],
                         capture_output=True, text=True, check=True).stdout
    print("queues:", out.split())
""")


@needs_server
def test_the_urls_user_and_vhost_work_on_the_private_node():
    port = free_port()
    run = with_services(sys.executable, "-c", CHILD, url=f"amqp://demo:s3cret@127.0.0.1:{port}/tenant")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "queues: ['services-check', '1']" in run.stdout
    assert not listening(port)


def test_a_broker_that_answers_is_used_and_never_stopped(broker_url):
    run = with_services(sys.executable, "-c", "print('ran')", url=broker_url)
    assert run.returncode == 0 and run.stdout == "ran\n" and run.stderr == ""
    connect(broker_url).close()  # still there


def test_the_command_status_is_passed_on(broker_url):
    assert with_services(sys.executable, "-c", "raise SystemExit(3)", url=broker_url).returncode == 3


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (CI has it)")
def test_private_redis_and_postgres_for_a_command_with_nothing_on_their_urls():
    redis_port, pg_port = free_port(), free_port()
    env = {**os.environ, "AMQTASK_RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/0",
           "AMQTASK_TEST_POSTGRES_URL": f"db+postgresql://postgres@127.0.0.1:{pg_port}/test"}
    probe = textwrap.dedent(f"""
        import psycopg, redis
        redis.Redis(port={redis_port}).set("k", "v")
        with psycopg.connect("host=127.0.0.1 port={pg_port} user=postgres dbname=test") as c:
            print(redis.Redis(port={redis_port}).get("k").decode(), c.execute("select 42").fetchone()[0])
    """)
    done = subprocess.run([sys.executable, "-m", "scripts.services", "redis,postgres", "--", sys.executable, "-c",
                           probe], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["v", "42"]
    assert "stopping the private Redis server" in done.stderr and "stopping the private PostgreSQL" in done.stderr
    assert not listening(redis_port) and not listening(pg_port)
