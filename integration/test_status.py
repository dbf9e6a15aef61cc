"""`amqtask status` against the real broker: depths, consumers, dead letters, a
missing queue that does not stop the listing, and --watch through a lost broker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pika

from scripts.services import free_port

from .conftest import ROOT, topology_yaml, track_topology


def status(config, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amqtask.cli", "status", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **(env or {})})


def rows(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "CONSUMERS", "DEAD", "DEAD-LETTER", "QUEUE"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_status_lists_depth_consumers_dead_letters_and_a_missing_queue(tmp_path, prefix, amqp, broker_url):
    track_topology(amqp, prefix)
    amqp.track("queue", f"{prefix}.default.dead")
    config = tmp_path / "routing.yaml"
    config.write_text(topology_yaml(prefix))
    # Declare everything but one queue, which stays missing.
    from amqtask.amqp.blocking import BlockingTransport
    from amqtask.topology.loader import load_settings

    settings = load_settings(config)
    with BlockingTransport(settings.broker) as transport:
        assert transport.declare(settings.topology, [q for q in settings.topology.queues
                                                     if q != f"{prefix}.audit"]) == []
    amqp.confirm_delivery()
    for _ in range(3):
        amqp.basic_publish("", f"{prefix}.web_tasks", b"x")
    amqp.queue_declare(f"{prefix}.default.dead", durable=True)
    amqp.basic_publish("", f"{prefix}.default.dead", b"dead")
    consumer = amqp.connection.channel()
    consumer.basic_qos(prefetch_count=1)
    consumer.basic_consume(f"{prefix}.default", lambda *a: None)

    shown = status(config)
    assert shown.returncode == 0, shown.stderr
    table = rows(shown.stdout)
    assert list(table) == list(settings.topology.queues)  # every queue, in routing.yaml's order
    assert table[f"{prefix}.web_tasks"] == ["3", "0", "-", f"{prefix}.web_tasks.dead"]
    assert table[f"{prefix}.default"] == ["0", "1", "1", f"{prefix}.default.dead"]
    assert table[f"{prefix}.audit"] == ["missing", "-", "-", f"{prefix}.audit.dead"]
    assert table[f"{prefix}.small"][:2] == ["0", "0"]
    consumer.close()
    probe = amqp.connection.channel()  # status declared nothing: the missing queue is still missing
    try:
        probe.queue_declare(f"{prefix}.audit", passive=True)
        raise AssertionError("status created the missing queue")
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404


def test_status_without_a_broker_is_one_line_and_exit_1(tmp_path, prefix):
    config = tmp_path / "routing.yaml"
    config.write_text(topology_yaml(prefix, url=f"amqp://guest:guest@127.0.0.1:{free_port()}//"))
    shown = status(config)
    assert shown.returncode == 1
    assert shown.stderr.splitlines()[-1].startswith("error: cannot connect to the broker at amqp://guest:***@")
    assert "Traceback" not in shown.stderr


def test_watch_keeps_going_through_a_lost_broker_and_stops_on_ctrl_c(tmp_path, prefix, proxy, amqp):
    track_topology(amqp, prefix)
    config = tmp_path / "routing.yaml"
    config.write_text(topology_yaml(prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//"))
    watch = subprocess.Popen([sys.executable, "-m", "amqtask.cli", "status", "--watch", "0.5", "--config",
                              str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        seen = read_until(watch, "QUEUE")
        proxy.refuse(True)
        proxy.cut()
        seen += read_until(watch, "error:")
        proxy.refuse(False)
        seen += read_until(watch, "QUEUE")
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    assert f"{prefix}.default" in seen and "missing" in seen


def read_until(process: subprocess.Popen, marker: str) -> str:
    """Lines of `process` up to and including the first one containing `marker`."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} never came; output: {''.join(seen)}")


def test_watch_stops_on_a_signal_even_in_the_middle_of_reconnecting(tmp_path, prefix, proxy, amqp):
    """A signal only asks the loop to stop: arriving during a connection attempt it
    neither hangs the command nor prints a traceback."""
    track_topology(amqp, prefix)
    config = tmp_path / "routing.yaml"
    config.write_text(topology_yaml(prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//"))
    proxy.refuse(True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
        watch = subprocess.Popen([sys.executable, "-m", "amqtask.cli", "status", "--watch", "0.5", "--config",
                                  str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        read_until(watch, "error:")
        watch.send_signal(sig)
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0 and "Traceback" not in err, err
