"""Faults and bad input against real `amqtask worker` processes on the real broker.
Every scenario accounts for every task: confirmed at publish, executed, executed
twice, lost. Lost must be zero. Sizes are CI sizes; AMQTASK_CHAOS_SCALE multiplies
them. Each scenario reports its figures (see integration/reliability.py)."""
from __future__ import annotations

import bz2
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amqtask import App, AmqtaskError, BrokerUnavailable
from amqtask.topology.loader import check_text

from .conftest import RESULTS_YAML, ROOT, WorkerHarness, drain, worker_yaml
from .proxy import Cutter, TcpProxy
from .reliability import report

SCALE = float(os.environ.get("AMQTASK_CHAOS_SCALE", "1"))
WINDOW = 2 * 4  # -c 2 x the default prefetch multiplier


def n(base: int) -> int:
    return max(1, int(base * SCALE))


def runs(harness) -> list[str]:
    return [r["id"] for r in harness.records("ran")]


def publish_marks(harness, count: int, prefix: str, sleep: float = 0.0) -> list[str]:
    """Queue `count` t.mark tasks (each sleeping `sleep` s, so a drain lasts long enough
    for the faults to land) and return their ids."""
    harness.declare()
    app = harness.app
    ids = []
    for i in range(count):
        app.send_task("t.mark", (i, sleep), task_id=f"{prefix}-{i}", ignore_result=True)
        ids.append(f"{prefix}-{i}")
    return ids


def wait_all_ran(harness, ids, timeout: float) -> float:
    """Wait until every id has run at least once; return how long it took."""
    wanted = set(ids)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if wanted <= set(runs(harness)):
            return time.monotonic() - started
        time.sleep(0.5)
    missing = wanted - set(runs(harness))
    raise AssertionError(f"{len(missing)} confirmed tasks never ran, e.g. {sorted(missing)[:5]}")


def account(harness, confirmed: list[str]) -> dict:
    executed = runs(harness)
    unique = set(executed)
    return {"confirmed": len(confirmed), "executed": len(unique), "duplicated": len(executed) - len(unique),
            "lost": len(set(confirmed) - unique)}


def no_results_app(yaml_text: str) -> App:
    settings = check_text(yaml_text.replace(RESULTS_YAML, "")).settings  # results are off unless configured
    assert settings is not None
    return App("chaos-publisher", settings=settings)


def test_publisher_under_network_faults(harness, prefix, proxy):
    """1. Every delay() through a proxy that cuts the connection each second either
    returns confirmed or raises; every confirmed task runs."""
    harness.start("-P", "threads", "-c", "4")
    publisher = no_results_app(worker_yaml(prefix, f"amqp://guest:guest@127.0.0.1:{proxy.port}//"))
    confirmed, raised = [], []
    with Cutter(proxy, 1.0):
        for i in range(n(10_000)):
            task_id = f"pub-{i}"
            try:
                publisher.send_task("t.mark", (i,), task_id=task_id)
                confirmed.append(task_id)
            except AmqtaskError:
                raised.append(task_id)
    publisher.close()
    wait_all_ran(harness, confirmed, timeout=120)
    time.sleep(1)  # let any message that was published but not confirmed run too
    figures = account(harness, confirmed)
    extras = set(runs(harness)) - set(confirmed)
    assert extras <= set(raised)  # a task nobody published cannot run
    assert figures["lost"] == 0
    report("publisher under network faults", load=f"{n(10_000)} delay() through a proxy",
           faults=f"{proxy.cuts} connection cuts (1/s)", **figures, crashes=0,
           recovery=f"{len(raised)} publishes raised ({len(extras)} of them had reached the broker)")


def test_workers_killed(harness):
    """2. Three workers drain late-ack tasks while a random one is SIGKILLed every 2 s
    and replaced: every task runs at least once; duplicates stay within the window."""
    ids = publish_marks(harness, n(10_000), "kill", sleep=0.005)
    workers = [harness.start("-P", "prefork", "-c", "2") for _ in range(3)]
    rng = random.Random(7)
    kills = 0
    started = time.monotonic()
    while not set(ids) <= set(runs(harness)):
        assert time.monotonic() - started < 300, "the drain did not finish"
        time.sleep(2)
        if set(ids) <= set(runs(harness)):
            break
        victim = rng.choice([w for w in workers if w.poll() is None])
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        workers.append(harness.start("-P", "prefork", "-c", "2"))
    figures = account(harness, ids)
    assert figures["lost"] == 0
    assert figures["duplicated"] <= WINDOW * max(kills, 1), figures
    report("workers killed", load=f"{len(ids)} late-ack tasks, 3 workers prefork -c 2",
           faults=f"{kills} SIGKILLs (one every 2 s)", **figures, crashes=f"{kills} (injected)",
           recovery=f"drained in {time.monotonic() - started:.1f}s; duplicates <= {WINDOW} x kills")


def test_connections_cut_under_consumers(prefix, tmp_path, amqp, proxy):
    """3. The same drain while the proxy cuts the workers' connections every second."""
    harness = WorkerHarness(prefix, tmp_path, amqp, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
    try:
        ids = publish_marks(harness, n(10_000), "cut", sleep=0.002)
        for _ in range(3):
            harness.start("-P", "prefork", "-c", "2")
        with Cutter(proxy, 1.0):
            elapsed = wait_all_ran(harness, ids, timeout=300)
        figures = account(harness, ids)
        assert figures["lost"] == 0
        assert all(p.poll() is None for p in harness.processes), "a worker died"
        assert figures["duplicated"] <= 3 * WINDOW * max(proxy.cuts, 1)
        report("connections cut under consumers", load=f"{len(ids)} tasks, 3 workers prefork -c 2",
               faults=f"{proxy.cuts} cuts of every connection (1/s)", **figures, crashes=0,
               recovery=f"drained in {elapsed:.1f}s; no worker restarted by hand")
    finally:
        harness.stop_all()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


class _Untracked:
    """The private broker is deleted whole at the end: nothing to track."""

    def track(self, *args: str) -> None:
        pass


@pytest.fixture
def private_harness(prefix, tmp_path, private_broker):
    h = WorkerHarness(prefix, tmp_path, _Untracked(), url=private_broker.url)
    yield h
    h.stop_all()


def test_broker_restart(private_harness, private_broker):
    """4. stop_app/start_app mid-drain with durable queues and persistent messages:
    the worker and the publisher carry on without being restarted. (On a node of
    the tests' own: restarting the shared broker would break everything else.)"""
    harness = private_harness
    _rabbitmqctl = private_broker.ctl
    ids = publish_marks(harness, n(5_000), "restart")
    worker = harness.start("-P", "prefork", "-c", "2")
    harness.wait_for(lambda: len(runs(harness)) >= len(ids) // 5, timeout=60, what="a fifth of the drain")
    confirmed_during, raised_during = [], []
    stop = threading.Event()

    def keep_publishing() -> None:
        i = 0
        while not stop.is_set():
            task_id = f"during-{i}"
            try:
                harness.app.send_task("t.mark", (i,), task_id=task_id, ignore_result=True)
                confirmed_during.append(task_id)
            except AmqtaskError:
                raised_during.append(task_id)
                time.sleep(0.2)
            i += 1

    publisher = threading.Thread(target=keep_publishing)
    try:
        _rabbitmqctl("stop_app")
        publisher.start()
        time.sleep(3)
    finally:
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")
    back = time.monotonic()
    back_wall = time.time()
    time.sleep(3)
    stop.set()
    publisher.join(30)
    all_confirmed = ids + confirmed_during
    wait_all_ran(harness, all_confirmed, timeout=180)
    first_after = min((r["t"] for r in harness.records("ran") if r["t"] >= back_wall), default=back_wall)
    figures = account(harness, all_confirmed)
    assert figures["lost"] == 0
    assert worker.poll() is None, "the worker exited instead of reconnecting"
    recovery = time.monotonic() - back
    report("broker restart", load=f"{len(ids)} queued + {len(confirmed_during)} published around the restart",
           faults="rabbitmqctl stop_app, 3 s down, start_app", **figures, crashes=0,
           recovery=f"{len(raised_during)} publishes raised while down; the worker ran tasks again "
                    f"{first_after - back_wall:.1f}s after start_app and drained {recovery:.1f}s after it")


# -- 5. bad messages ------------------------------------------------------------------

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
GOOD_BODY = json.dumps([[1], {}, EMBED]).encode()
# Over broker.max_message_bytes once decompressed, a few KiB on the wire.
_BOMB = b"[[" + b"0," * 5_000_000 + b"0],{},{}]"
BOMBS = [("application/x-gzip", zlib.compress(_BOMB, 9)), ("application/x-bz2", bz2.compress(_BOMB, 9))]
wrong_header = st.one_of(
    st.fixed_dictionaries({"retries": st.text(max_size=5)}),
    st.fixed_dictionaries({"eta": st.integers(-2**31, 2**31 - 1)}),
    st.fixed_dictionaries({"eta": st.text(alphabet="abcxyz", min_size=1, max_size=8)}),
    st.fixed_dictionaries({"expires": st.booleans()}),
    st.fixed_dictionaries({"timelimit": st.one_of(st.text(max_size=4), st.lists(st.integers(0, 1000), min_size=3, max_size=5))}),
    st.fixed_dictionaries({"group_index": st.text(max_size=4)}),
    st.fixed_dictionaries({"id": st.one_of(st.integers(-2**31, 2**31 - 1), st.just(""), st.just("x" * 300))}),
)
hostile_header = st.one_of(
    st.fixed_dictionaries({"timelimit": st.tuples(st.one_of(st.none(), st.integers(-10**9, -1)),
                                                  st.integers(-10**9, -1)).map(list)}),
    st.fixed_dictionaries({"timelimit": st.lists(st.integers(10**9, 2**31 - 1), min_size=2, max_size=2)}),
    st.fixed_dictionaries({"retries": st.one_of(st.integers(-2**31, -1), st.integers(10**7, 2**31 - 1))}),
    st.fixed_dictionaries({"eta": st.integers(2, 9000).map(lambda years: f"{min(9999, 2026 + years)}-01-01T00:00:00")}),
)
bad_canvas = st.one_of(
    st.fixed_dictionaries({"callbacks": st.lists(st.one_of(st.text(max_size=10), st.integers()), min_size=1,
                                                 max_size=3)}),
    st.fixed_dictionaries({"chain": st.lists(st.fixed_dictionaries({"task": st.integers()}), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"callbacks": st.just([{"task": "t.mark", "options": "not a mapping"}])}),
)
malformed = st.one_of(
    st.builds(lambda b: ("random bytes", b"\xff" + b, "application/json", "utf-8", {}), st.binary(max_size=200)),
    st.builds(lambda k: ("truncated json", GOOD_BODY[:k], "application/json", "utf-8", {}),
              st.integers(0, len(GOOD_BODY) - 1)),
    st.builds(lambda t: ("wrong content type", GOOD_BODY, t, "utf-8", {}),
              st.sampled_from(["text/plain", "application/xml", "image/png", "", "application/json+x"])),
    st.builds(lambda e: ("wrong encoding", GOOD_BODY, "application/json", e, {}),
              st.sampled_from(["utf-16", "latin-1", "gzip", "ebcdic"])),
    st.builds(lambda h: ("ill-typed header", GOOD_BODY, "application/json", "utf-8", h), wrong_header),
    st.builds(lambda k: ("huge argument list", json.dumps([list(range(k)), {}, EMBED]).encode(), "application/json",
                         "utf-8", {}), st.integers(1_000, 50_000)),
    st.builds(lambda name: ("unknown task", GOOD_BODY, "application/json", "utf-8", {"task": f"chaos.unknown.{name}"}),
              st.text(alphabet="abcdef", min_size=1, max_size=8)),
    st.just(("pickle", pickle.dumps([[1], {}, EMBED]), "application/x-python-serialize", "binary", {})),
    st.builds(lambda c: ("wrong compression", GOOD_BODY, "application/json", "utf-8", {"compression": c}),
              st.sampled_from(["application/x-gzip", "application/x-bz2", "application/x-lzma"])),
    st.just(("no task header", GOOD_BODY, "application/json", "utf-8", {"task": None})),
    st.builds(lambda h: ("hostile header", GOOD_BODY, "application/json", "utf-8", h), hostile_header),
    st.builds(lambda bomb: ("compression bomb", bomb[1], "application/json", "utf-8", {"compression": bomb[0]}),
              st.sampled_from(BOMBS)),
    st.builds(lambda depth: ("deep nesting", ("[" * depth + "]" * depth).encode(), "application/json", "utf-8", {}),
              st.integers(200, 5_000)),
    st.just(("yaml alias", b"- &a [1]\n- *a\n- {}\n", "application/x-yaml", "utf-8", {})),
    st.builds(lambda embed: ("malformed canvas (runs, then a dead copy)",
                             json.dumps([[1], {}, {**EMBED, **embed}]).encode(), "application/json", "utf-8", {}),
              bad_canvas),
)


@pytest.mark.parametrize("pool", ["threads", "prefork", "asyncio", "solo"])
def test_bad_messages(harness, amqp, pool):
    """5. Thousands of malformed messages, valid tasks interleaved, in every pool: no
    worker crash, every malformed one dead-lettered with a reason (a malformed canvas
    after its task ran: a copy), every valid one run."""
    worker = harness.start("-P", pool, "-c", "2")
    sent: dict[int, str] = {}
    valid: list[str] = []

    @settings(max_examples=n(500), deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(malformed)
    def publish(case):
        kind, body, content_type, encoding, extra = case
        seq = len(sent)
        headers = {"task": "t.mark", "id": f"bad-{seq}", **extra, "x-chaos-seq": seq}
        headers = {k: v for k, v in headers.items() if v is not None}
        amqp.basic_publish("", harness.queue, body, pika.BasicProperties(
            headers=headers, content_type=content_type or None, content_encoding=encoding))
        sent[seq] = kind
        if seq % 10 == 0:
            valid.append(harness.app.send_task("t.mark", (seq,), task_id=f"good-{seq}", ignore_result=True).id)

    publish()
    dead_queue = f"{harness.queue}.dead"
    harness.wait_for(lambda: amqp.queue_declare(dead_queue, passive=True).method.message_count >= len(sent),
                     timeout=180, what=f"{len(sent)} dead letters")
    wait_all_ran(harness, valid, timeout=120)
    dead = drain(amqp, dead_queue)
    by_seq = {p.headers.get("x-chaos-seq"): p.headers.get("x-amqtask-reason") for _, p, _ in dead}
    assert set(by_seq) == set(sent), f"missing dead letters: {sorted(set(sent) - set(by_seq))[:10]}"
    assert all(by_seq.values()), "a dead letter without a reason"
    assert worker.poll() is None
    assert "Traceback" not in harness.output(worker)
    kinds = sorted(set(sent.values()))
    report(f"bad messages ({pool} pool)", load=f"{len(sent)} malformed ({len(kinds)} kinds) + {len(valid)} valid interleaved",
           faults=", ".join(kinds), confirmed=len(valid), executed=len(set(runs(harness)) & set(valid)),
           duplicated=0, lost=0, crashes=0, recovery=f"{len(dead)} dead letters, each with x-amqtask-reason")


# -- 7. memory under backlog ----------------------------------------------------------


def rss_kib(pid: int) -> int:
    """RSS of a process and its children, from /proc."""
    total = 0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [str(pid), *children]:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def test_memory_under_backlog(harness, amqp):
    """7. 100,000 queued tasks and a slow task: the worker's memory stays flat, since the
    prefetch window, not the backlog, bounds what it holds."""
    from amqtask.protocol import TaskMessage, encode_task
    from amqtask.serializers import Codec

    codec = Codec()
    total = n(100_000)
    harness.declare()
    for i in range(total):
        wire = encode_task(TaskMessage(task="t.slow", id=f"mem-{i}", args=(i,)), codec)
        amqp.basic_publish("", harness.queue, wire.body, pika.BasicProperties(
            headers=dict(wire.headers), content_type=wire.content_type, content_encoding=wire.content_encoding,
            delivery_mode=1))
    harness.wait_for(lambda: amqp.queue_declare(harness.queue, passive=True).method.message_count == total,
                     what=f"{total} queued messages")
    worker = harness.start("-P", "prefork", "-c", "2")
    time.sleep(2)  # warm up: imports, children, first deliveries
    samples = []
    for _ in range(n(20)):
        samples.append(rss_kib(worker.pid))
        time.sleep(0.5)
    growth = samples[-1] - samples[0]
    assert growth < 20 * 1024, f"RSS grew by {growth} KiB: {samples}"
    remaining = amqp.queue_declare(harness.queue, passive=True).method.message_count
    report("memory under backlog", load=f"{total} queued t.slow (20 ms), 1 worker prefork -c 2",
           faults="backlog far above the prefetch window", confirmed=total, executed=total - remaining,
           duplicated="-", lost="n/a (measured, then deleted)", crashes=0,
           recovery=f"RSS (worker + children) {samples[0] // 1024}-{max(samples) // 1024} MiB over "
                    f"{len(samples) / 2:.0f}s, growth {growth} KiB")


# -- 8. security ----------------------------------------------------------------------


def test_credentials_never_appear_in_output(tmp_path, prefix, private_broker):
    """8a. A unique password never shows in logs, banners, errors or --help. (A user
    is added on a node of the tests' own, never on the shared broker.)"""
    from amqtask.brokerurl import parse_broker_urls

    amqp = _Untracked()
    _rabbitmqctl = private_broker.ctl
    base = parse_broker_urls(private_broker.url)[0]
    user, password = f"{prefix}-user", f"pw-{uuid.uuid4().hex}"
    _rabbitmqctl("add_user", user, password)
    try:
        _rabbitmqctl("set_permissions", "-p", base.vhost, user, ".*", ".*", ".*")
        url = f"amqp://{user}:{password}@{base.host}:{base.port}//"
        harness = WorkerHarness(prefix, tmp_path, amqp, url=url)
        env = {**harness.env, "AMQTASK_BROKER_URL": url}
        outputs = []

        def cli(*args: str, expect: int | None = 0) -> None:
            run = subprocess.run([sys.executable, "-m", "amqtask.cli", *args], capture_output=True, text=True,
                                 env=env, cwd=ROOT, timeout=60)
            outputs.append(run.stdout + run.stderr)
            if expect is not None:
                assert run.returncode == expect, run.stderr

        config = ["--config", str(harness.config)]
        for command in ([], ["check"], ["declare"], ["call"], ["worker"], ["inspect", "ping"], ["purge"]):
            cli(*command, "--help")
        cli("check", *config)
        cli("declare", *config)
        worker = harness.start("-P", "solo")
        cli("call", "t.add", "--args", "[1,2]", "--wait", *config)
        cli("inspect", "ping", "-d", worker.name, *config)
        bad = harness.config.read_text().replace(f"{base.host}:{base.port}", "127.0.0.1:1")
        (tmp_path / "bad.yaml").write_text(bad)
        cli("call", "t.add", "--config", str(tmp_path / "bad.yaml"), expect=1)
        wrong = harness.config.read_text().replace(password, "not-the-password")
        (tmp_path / "wrong.yaml").write_text(wrong)
        cli("declare", "--config", str(tmp_path / "wrong.yaml"), expect=1)
        harness.stop_all()
        outputs.append(harness.output(worker))
        everything = "\n".join(outputs)
        assert user in everything  # the output really is the one that names the broker
        assert password not in everything
        report("security: credentials", load=f"{len(outputs)} outputs: --help, check, declare, call, worker logs, "
               "errors", faults="wrong port, wrong password", confirmed="-", executed="-", duplicated="-", lost=0,
               crashes=0, recovery="password absent from every output")
    finally:
        _rabbitmqctl("delete_user", user)


def test_pickle_is_refused_unless_enabled(harness, amqp):
    """8b. Pickle is dead-lettered by default and runs only where accepted."""
    body = pickle.dumps([[5, 6], {}, EMBED])
    props = pika.BasicProperties(headers={"task": "t.add", "id": "pickle-1"},
                                 content_type="application/x-python-serialize", content_encoding="binary")
    worker = harness.start("-P", "solo")
    amqp.basic_publish("", harness.queue, body, props)
    dead_queue = f"{harness.queue}.dead"
    harness.wait_for(lambda: amqp.queue_declare(dead_queue, passive=True).method.message_count == 1,
                     what="the pickle dead letter")
    [(_, dead, _)] = drain(amqp, dead_queue)
    assert "not accepted" in dead.headers["x-amqtask-reason"]
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    text = harness.config.read_text().replace("  publish_timeout: 5", "  publish_timeout: 5\n"
                                                                      "  accept_content: [json, pickle]")
    harness.config.write_text(text)
    harness.start("-P", "solo", "-l", "DEBUG")
    amqp.basic_publish("", harness.queue, body, pika.BasicProperties(
        headers={"task": "t.add", "id": "pickle-2"}, content_type="application/x-python-serialize",
        content_encoding="binary"))
    harness.wait_for(lambda: "t.add[pickle-2] succeeded" in harness.output(harness.processes[-1]),
                     what="the accepted pickle task")


def _make_certificates(directory) -> tuple[str, str, str]:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=amqtask test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key")


def test_tls_end_to_end(tmp_path, prefix, amqp, broker_url):
    """8c. amqps:// with a CA: publisher, worker and results over TLS (a TLS listener in
    front of the broker, with a CA and certificate made for the test)."""
    import ssl

    from amqtask.brokerurl import parse_broker_urls

    ca, cert, key = _make_certificates(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    base = parse_broker_urls(broker_url)[0]
    listener = TcpProxy(base.host, base.port, ssl_context=server).start()
    try:
        url = f"amqps://guest:guest@localhost:{listener.port}//"
        harness = WorkerHarness(prefix, tmp_path, amqp, url=url)
        text = harness.config.read_text().replace("  publish_timeout: 5",
                                                  f"  publish_timeout: 5\n  tls: {{ca_certs: {ca}}}")
        harness.config.write_text(text)
        tls_app = App("tls", config=harness.config)
        harness.app.configure(tls_app.settings)
        harness.start("-P", "threads")
        assert harness.module.add.delay(20, 22).get(timeout=30) == 42
        untrusted = check_text(text.replace(ca, str(tmp_path / "server.pem"))).settings
        with pytest.raises(BrokerUnavailable):
            App("x", settings=untrusted).send_task("t.add", (1, 1))
        harness.stop_all()
        report("security: TLS", load="publish, consume and results over amqps://", faults="an untrusted CA",
               confirmed=1, executed=1, duplicated=0, lost=0, crashes=0,
               recovery="verified TLS works; an unverifiable server is refused")
    finally:
        listener.stop()
