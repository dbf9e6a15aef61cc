"""scripts/services.py without starting anything: where a URL points, whether
something answers there, and what the script decides to do about it."""
from __future__ import annotations

import socket

import pytest

from scripts import services as sv
from scripts.services import CONTAINER, INSTALL, LOCAL, REMOTE, USE, Endpoint


@pytest.fixture
def silent_port():
    """A port that is reserved (bound) but where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def listening_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_endpoint_of_a_url():
    assert sv.endpoint("amqp://guest:guest@127.0.0.1:5673//") == Endpoint("127.0.0.1", 5673)
    assert sv.endpoint("amqp://u:p@rabbit.internal/prod") == Endpoint("rabbit.internal", 5672)
    assert sv.endpoint("amqp://a:1@localhost:1111//; amqp://b:2@other:2222//") == Endpoint("localhost", 1111)
    assert sv.endpoint("amqp://[::1]:5679//").local and not sv.endpoint("amqp://10.0.0.5//").local


def test_answers_tells_a_silent_port_from_a_listening_one(silent_port, listening_port):
    assert not sv.answers(Endpoint("127.0.0.1", silent_port))
    assert sv.answers(Endpoint("127.0.0.1", listening_port))


def test_something_answering_is_used_as_it_is(listening_port):
    never = pytest.fail  # nothing else may even be looked at
    assert sv.decide(Endpoint("127.0.0.1", listening_port), sv.RABBITMQ, which=never, docker=never) == USE


def test_nothing_answering_here_starts_a_server_a_container_or_says_how_to_install(silent_port):
    here = Endpoint("127.0.0.1", silent_port)
    installed = {"rabbitmq-server": "/usr/sbin/rabbitmq-server"}.get
    assert sv.decide(here, sv.RABBITMQ, which=installed, docker=lambda: True) == LOCAL
    assert sv.decide(here, sv.RABBITMQ, which=lambda _: None, docker=lambda: True) == CONTAINER
    assert sv.decide(here, sv.RABBITMQ, which=lambda _: None, docker=lambda: False) == INSTALL


def test_nothing_answering_elsewhere_starts_nothing():
    nowhere = Endpoint("rabbit.internal", 5672)
    assert sv.decide(nowhere, sv.RABBITMQ, answering=lambda _: False, which=pytest.fail, docker=pytest.fail) == REMOTE


@pytest.mark.parametrize(("system", "os_release", "expected"), [
    ("Linux", 'ID=ubuntu\nID_LIKE=debian\n', "debian"),
    ("Linux", 'ID="rocky"\nID_LIKE="rhel centos fedora"\n', "fedora"),
    ("Linux", "ID=arch\n", "arch"),
    ("Linux", "ID=alpine\n", "alpine"),
    ("Linux", "ID=nixos\n", "other"),
    ("Darwin", None, "macos"),
    ("Windows", None, "other"),
])
def test_platform(system, os_release, expected):
    assert sv.platform_id(system, os_release) == expected


def test_the_install_hint_is_one_command_for_this_platform(silent_port):
    hint = sv.install_hint(sv.RABBITMQ, Endpoint("127.0.0.1", silent_port), "macos")
    assert f"nothing answers at 127.0.0.1:{silent_port} (AMQTASK_BROKER_URL)" in hint
    assert "\n    brew install rabbitmq\n" in hint
    assert "\n    docker run -d --rm -p 5672:5672 rabbitmq:3\n" in sv.install_hint(
        sv.RABBITMQ, Endpoint("127.0.0.1", 5672), "other")


def test_main_prints_the_hint_and_fails_when_nothing_can_be_started(silent_port, monkeypatch, capsys):
    monkeypatch.setenv("AMQTASK_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{silent_port}//")
    monkeypatch.setattr(sv.shutil, "which", lambda name: None)
    ran = []
    monkeypatch.setattr(sv, "_run", lambda command, env: ran.append(command) or 0)
    assert sv.main(["rabbitmq", "--", "true"]) == 1
    assert ran == []
    assert "Install RabbitMQ with:" in capsys.readouterr().err


def test_main_runs_the_command_as_is_when_the_broker_answers(listening_port, monkeypatch):
    monkeypatch.setenv("AMQTASK_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{listening_port}//")
    monkeypatch.delenv("RABBITMQ_NODENAME", raising=False)
    ran = []
    monkeypatch.setattr(sv, "_run", lambda command, env: ran.append((command, env.get("RABBITMQ_NODENAME"))) or 7)
    assert sv.main(["rabbitmq", "--", "echo", "hi"]) == 7
    assert ran == [(["echo", "hi"], None)]


def test_main_refuses_unknown_services_and_a_missing_command():
    with pytest.raises(SystemExit) as unknown:
        sv.main(["kafka", "--", "true"])
    assert unknown.value.code == 2
    with pytest.raises(SystemExit) as empty:
        sv.main(["rabbitmq"])
    assert empty.value.code == 2


@pytest.mark.parametrize("service", [sv.REDIS, sv.POSTGRES], ids=["redis", "postgres"])
def test_redis_and_postgres_have_the_same_chain_local_server_container_install_hint(silent_port, service):
    point = sv.Endpoint("127.0.0.1", silent_port)
    server = {service.server: f"/usr/bin/{service.server}"}.get
    assert sv.decide(point, service, which=server, docker=lambda: True) == sv.LOCAL
    assert sv.decide(point, service, which=lambda name: None, docker=lambda: True) == sv.CONTAINER
    assert sv.decide(point, service, which=lambda name: None, docker=lambda: False) == sv.INSTALL
    assert service.install["other"] in sv.install_hint(service, point, "other")


def test_redis_and_postgres_urls():
    assert sv.endpoint("redis://127.0.0.1/0") == sv.Endpoint("127.0.0.1", 6379)
    assert sv.endpoint("db+postgresql://postgres@127.0.0.1/test") == sv.Endpoint("127.0.0.1", 5432)


class FakeContainer:
    """Stands in for a testcontainers class: records how it was made, and stopped."""

    made: list["FakeContainer"] = []

    def __init__(self, image, **options):
        self.image, self.options, self.stopped = image, options, False
        FakeContainer.made.append(self)

    def start(self):
        return self

    def get_container_host_ip(self):
        return "172.17.0.1"

    def get_exposed_port(self, port):
        return str(40000 + port % 1000)

    def stop(self):
        self.stopped = True


@pytest.fixture
def docker_only(monkeypatch):
    """Nothing answers, no server installed, Docker answers, testcontainers faked."""
    import sys
    import types

    FakeContainer.made = []
    for module, cls in (("rabbitmq", "RabbitMqContainer"), ("redis", "RedisContainer"),
                        ("postgres", "PostgresContainer")):
        monkeypatch.setitem(sys.modules, f"testcontainers.{module}", types.SimpleNamespace(**{cls: FakeContainer}))
    monkeypatch.setattr(sv, "answers", lambda point, timeout=1.0: False)
    monkeypatch.setattr(sv, "installed", lambda server: None)
    monkeypatch.setattr(sv, "docker_answers", lambda: True)
    return FakeContainer.made


def test_with_only_docker_every_service_runs_in_a_throwaway_container_given_to_the_command(docker_only, monkeypatch,
                                                                                         capsys):
    monkeypatch.setenv("AMQTASK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("AMQTASK_RESULT_BACKEND", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("AMQTASK_TEST_POSTGRES_URL", "db+postgresql://amq@127.0.0.1:5432/results")
    seen = {}
    monkeypatch.setattr(sv, "_run", lambda command, env: seen.update(env) or 0)
    assert sv.main(["rabbitmq,redis,postgres", "--", "true"]) == 0
    rabbit, redis, postgres = docker_only
    assert (rabbit.image, redis.image, postgres.image) == ("rabbitmq:3", "redis:7", "postgres:16")
    assert seen["AMQTASK_BROKER_URL"] == "amqp://guest:guest@172.17.0.1:40672//"
    assert seen["AMQTASK_RESULT_BACKEND"] == "redis://172.17.0.1:40379/3"  # the URL's database kept
    password = postgres.options["password"]
    assert postgres.options == {"username": "amq", "password": password, "dbname": "results"} and password
    assert seen["AMQTASK_TEST_POSTGRES_URL"] == f"db+postgresql://amq:{password}@172.17.0.1:40432/results"
    assert all(c.stopped for c in docker_only)  # thrown away after the command
    err = capsys.readouterr().err
    for title in ("RabbitMQ", "Redis", "PostgreSQL"):
        assert f"starting a private {title} (Docker container)" in err
        assert f"stopping the {title} container started for this run" in err


def test_a_server_that_is_installed_is_preferred_to_docker(docker_only, monkeypatch):
    monkeypatch.setattr(sv, "installed", lambda server: f"/usr/bin/{server}" if server == "redis-server" else None)
    started = []
    monkeypatch.setattr(sv.LocalRedis, "start", lambda self: started.append(self.port))
    monkeypatch.setattr(sv.LocalRedis, "stop", lambda self: None)
    monkeypatch.setenv("AMQTASK_RESULT_BACKEND", "redis://127.0.0.1:6390/0")
    monkeypatch.setattr(sv, "_run", lambda command, env: 0)
    assert sv.main(["redis,postgres", "--", "true"]) == 0
    assert started == [6390] and [c.image for c in docker_only] == ["postgres:16"]
