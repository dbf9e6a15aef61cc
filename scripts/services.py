"""Run a command with the services it needs answering, starting them when nothing does.

    python -m scripts.services rabbitmq -- python examples/demo.py

For each service named: if something answers at its URL (from its environment
variable, else the default), the command just runs. If nothing answers and the URL
is on this machine, a private server is started for the command's lifetime:
- with the server installed (`rabbitmq-server`): a node of its own, with its own
  name, data directory and port (the URL's), stopped and deleted afterwards; a
  server this script did not start is never stopped;
- else with Docker answering: a throwaway container (testcontainers, the `docker`
  extra), whose address is handed to the command in the service's variable;
- else: the one command that installs the server on this platform is printed, and
  the exit status is 1.
A URL on another host that does not answer is reported; nothing is started.

Standard library only (testcontainers is imported when a container is used), so
`make demo`, `make test` and `.ci/run` can all use it. A new service is one more
`Service` entry in SERVICES.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import quote, unquote, urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Service:
    name: str
    title: str  # as people write it
    env: str  # the variable holding its URL
    default_url: str
    server: str  # the program that runs it locally
    install: Mapping[str, str]  # platform id -> the command that installs it
    docker_requirement: str  # what pip installs for the container path
    extra_env: Mapping[str, str] = field(default_factory=dict)


RABBITMQ = Service(
    name="rabbitmq",
    title="RabbitMQ",
    env="AMQTASK_BROKER_URL",
    default_url="amqp://guest:guest@127.0.0.1:5672//",
    server="rabbitmq-server",
    install={
        "debian": "sudo apt-get install -y rabbitmq-server",
        "fedora": "sudo dnf install -y rabbitmq-server",
        "arch": "sudo pacman -S rabbitmq",
        "alpine": "sudo apk add rabbitmq-server",
        "macos": "brew install rabbitmq",
        "other": "docker run -d --rm -p 5672:5672 rabbitmq:3",
    },
    docker_requirement="testcontainers[rabbitmq]>=4.0",
)
REDIS = Service(
    name="redis",
    title="Redis",
    env="AMQTASK_RESULT_BACKEND",
    default_url="redis://127.0.0.1:6379/0",
    server="redis-server",
    install={
        "debian": "sudo apt-get install -y redis-server",
        "fedora": "sudo dnf install -y redis",
        "arch": "sudo pacman -S redis",
        "alpine": "sudo apk add redis",
        "macos": "brew install redis",
        "other": "docker run -d --rm -p 6379:6379 redis:7",
    },
    docker_requirement="testcontainers[redis]>=4.0",
)
POSTGRES = Service(
    name="postgres",
    title="PostgreSQL",
    env="AMQTASK_TEST_POSTGRES_URL",
    default_url="db+postgresql://postgres@127.0.0.1:5432/test",
    server="postgres",
    install={
        "debian": "sudo apt-get install -y postgresql",
        "fedora": "sudo dnf install -y postgresql-server",
        "arch": "sudo pacman -S postgresql",
        "alpine": "sudo apk add postgresql",
        "macos": "brew install postgresql",
        "other": "docker run -d --rm -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres:16",
    },
    docker_requirement="testcontainers[postgres]>=4.0",
)
SERVICES = {s.name: s for s in (RABBITMQ, REDIS, POSTGRES)}


# -- deciding ------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def local(self) -> bool:
        return self.host in LOOPBACK


DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379, "db+postgresql": 5432,
                 "postgresql": 5432}


def endpoint(url: str, default_port: int | None = None) -> Endpoint:
    """Host and port of the first URL of a failover list (`url1;url2`)."""
    first = url.split(";")[0].strip()
    parts = urlsplit(first)
    port = parts.port or default_port or DEFAULT_PORTS.get(parts.scheme, 5672)
    return Endpoint(parts.hostname or "127.0.0.1", port)


def answers(point: Endpoint, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        with socket.create_connection((point.host.strip("[]"), point.port), timeout=timeout):
            return True
    except OSError:
        return False


def docker_answers() -> bool:
    """The Docker command exists and its daemon answers."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


USE, LOCAL, CONTAINER, INSTALL, REMOTE = "use", "local", "container", "install", "remote"


def decide(point: Endpoint, service: Service, *, answering: Callable[[Endpoint], bool] | None = None,
           which: Callable[[str], str | None] | None = None, docker: Callable[[], bool] | None = None) -> str:
    """What to do for `service` at `point`: use what answers, start a local server, a
    container, or tell how to install one (REMOTE: nothing answers elsewhere). The
    probes default to the real ones."""
    if (answering or answers)(point):
        return USE
    if not point.local:
        return REMOTE
    if (which or installed)(service.server):
        return LOCAL
    if service.name in CONTAINERS and (docker or docker_answers)():
        return CONTAINER
    return INSTALL


def installed(server: str) -> str | None:
    """The server program's path (PostgreSQL's lives outside PATH on Debian)."""
    found = shutil.which(server)
    if found is None and server == "postgres":
        found = next((str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))), None)
    return found


def platform_id(system: str | None = None, os_release: str | None = None) -> str:
    """debian, fedora, arch, alpine, macos or other."""
    system = system or platform.system()
    if system == "Darwin":
        return "macos"
    if system != "Linux":
        return "other"
    if os_release is None:
        try:
            os_release = Path("/etc/os-release").read_text()
        except OSError:
            return "other"
    fields = dict(line.split("=", 1) for line in os_release.splitlines() if "=" in line)
    ids = " ".join(fields.get(k, "").strip('"').lower() for k in ("ID", "ID_LIKE")).split()
    for family, names in (("debian", ("debian", "ubuntu")), ("fedora", ("fedora", "rhel", "centos")),
                          ("arch", ("arch",)), ("alpine", ("alpine",))):
        if any(name in ids for name in names):
            return family
    return "other"


def install_hint(service: Service, point: Endpoint, platform_name: str | None = None) -> str:
    command = service.install.get(platform_name or platform_id(), service.install["other"])
    return (f"nothing answers at {point.host}:{point.port} ({service.env}), and neither {service.server} nor "
            f"Docker is available here. Install {service.title} with:\n\n    {command}\n\n"
            f"then run this again (it starts and stops a private {service.title} itself), or set {service.env} "
            f"to the URL of one that runs.")


# -- running a private RabbitMQ node -------------------------------------------------
class LocalRabbitMQ:
    """A node of our own on `port`: own name, data directory and distribution port,
    no plugins. Only this node is ever stopped (`rabbitmqctl -n <its name> stop`)."""

    name = "private RabbitMQ node"

    def __init__(self, port: int, *, node: str | None = None, home: Path | None = None,
                 dist_port: int | None = None, config: str = "", advanced: str = "") -> None:
        """`node`, `home` and `dist_port` fixed (a cluster's members), else made up;
        `config` is added to the node's rabbitmq.conf; `advanced` is its
        advanced.config (Erlang terms, for settings rabbitmq.conf does not have)."""
        self.port = port
        self.node = node or f"amqtask-{port}-{uuid.uuid4().hex[:6]}@localhost"
        self.home = home or Path(tempfile.mkdtemp(prefix="amqtask-rabbitmq-"))
        self.dist_port = dist_port
        self.config = config
        self.advanced = advanced
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a command needs to reach this node with rabbitmqctl too."""
        return {"RABBITMQ_NODENAME": self.node}

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n{self.config}")
        (self.home / "enabled_plugins").write_text("[].\n")
        if self.advanced:
            (self.home / "advanced.config").write_text(self.advanced)
        _give_to_rabbitmq_user(self.home)
        env = {**os.environ, "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
               "RABBITMQ_DIST_PORT": str(self.dist_port or free_port()),
               "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
               "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"), "RABBITMQ_LOG_BASE": str(self.home / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
               "RABBITMQ_PID_FILE": str(self.home / "pid"),
               **({"RABBITMQ_ADVANCED_CONFIG_FILE": str(self.home / "advanced.config")} if self.advanced else {})}
        log = open(self.home / "server.log", "wb")
        # Its own session: a Ctrl-C meant for the command must not take the broker
        # away while the command still shuts down warmly through it.
        self.process = subprocess.Popen(["rabbitmq-server"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self.home, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with status {self.process.returncode}:\n{self._tail()}")
            if answers(Endpoint("127.0.0.1", self.port)) and self._ctl("await_startup", "--timeout", "30") == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"rabbitmq-server did not start within {START_TIMEOUT:g}s:\n{self._tail()}")

    def add_user(self, username: str, password: str, vhost: str) -> None:
        """Let the URL's credentials in (a fresh node knows only guest)."""
        if vhost != "/":
            self._ctl("add_vhost", vhost)
        if username != "guest":
            self._ctl("add_user", username, password)
        self._ctl("set_permissions", "-p", vhost, username, ".*", ".*", ".*")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._ctl("stop")
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)

    def _ctl(self, *args: str) -> int:
        return subprocess.run(["rabbitmqctl", "-n", self.node, "-q", *args], capture_output=True,
                              timeout=90).returncode

    def _tail(self) -> str:
        try:
            return "\n".join((self.home / "server.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


class LocalRedis:
    """A redis-server of our own on `port`, keeping nothing on disk."""

    name = "private Redis server"

    def __init__(self, port: int) -> None:
        self.port = port
        self.home = Path(tempfile.mkdtemp(prefix="amqtask-redis-"))
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.home)], stdout=open(self.home / "server.log", "wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_answering(self.process, self.port, "redis-server", self.home / "server.log")

    def stop(self) -> None:
        _terminate(self.process)
        shutil.rmtree(self.home, ignore_errors=True)


class LocalPostgres:
    """A PostgreSQL cluster of our own on `port` (initdb into a temporary directory,
    trust authentication, database `test`), run as the `postgres` user when started
    by root, since PostgreSQL refuses to run as root."""

    name = "private PostgreSQL server"

    def __init__(self, port: int) -> None:
        self.port = port
        self.home = Path(tempfile.mkdtemp(prefix="amqtask-postgres-"))
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def _as_owner(self, *command: str) -> list[str]:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def start(self) -> None:
        binaries = _postgres_binaries()
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
        data = self.home / "data"
        subprocess.run(self._as_owner(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"),
                       check=True, capture_output=True, timeout=120)
        self.process = subprocess.Popen(
            self._as_owner(str(binaries / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.home),
                           "-c", "listen_addresses=127.0.0.1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_answering(self.process, self.port, "postgres", None)
        for _ in range(30):  # accepting connections a moment after the port opens
            done = subprocess.run(self._as_owner(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                                                 "-U", "postgres", "test"), capture_output=True, timeout=30)
            if done.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError("the private PostgreSQL server did not accept connections")

    def stop(self) -> None:
        _terminate(self.process)
        shutil.rmtree(self.home, ignore_errors=True)


def _postgres_binaries() -> Path:
    """Where initdb and postgres live (Debian keeps them out of PATH)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
    for directory in reversed(versions):  # Debian's: every program of one version together
        if all((directory / name).exists() for name in ("initdb", "postgres", "createdb")):
            return directory
    found = shutil.which("postgres")
    if found and all((Path(found).parent / name).exists() for name in ("initdb", "createdb")):
        return Path(found).parent
    raise RuntimeError("PostgreSQL's initdb, postgres and createdb were not found together")


def _wait_answering(process: subprocess.Popen, port: int, what: str, log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with status {process.returncode}\n{tail}")
        if answers(Endpoint("127.0.0.1", port)):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT:g}s")


def _terminate(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _give_to_rabbitmq_user(path: Path) -> None:
    """Packaged servers started by root run as the `rabbitmq` user: let it write here."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            import pwd

            account = pwd.getpwnam("rabbitmq")
        except (ImportError, KeyError):
            return
        for item in (path, *path.rglob("*")):
            os.chown(item, account.pw_uid, account.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Container:
    """A throwaway container (testcontainers, the `docker` extra, installed on first
    use); the command is given its URL in the service's variable. Subclasses name the
    testcontainers class, the image and how the URL is written."""

    name = "container"
    module, cls, image, port = "", "", "", 0

    def __init__(self, service: Service, url: str) -> None:
        self.service = service
        self.wanted = urlsplit(url.split(";")[0].strip())  # user, database... kept where the container allows
        self.container = None
        self.url = ""

    def start(self) -> None:
        container = self.container = self.create(self._testcontainers_class()).start()
        self.url = self.url_for(container.get_container_host_ip(), int(container.get_exposed_port(self.port)))

    def create(self, container_class: type) -> object:
        return container_class(self.image)

    def url_for(self, host: str, port: int) -> str:
        raise NotImplementedError

    @property
    def env(self) -> dict[str, str]:
        return {self.service.env: self.url}

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()

    def _testcontainers_class(self) -> type:
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            print(f"installing {self.service.docker_requirement} (the 'docker' extra) for a throwaway container",
                  file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", self.service.docker_requirement],
                           check=True)
            module = importlib.import_module(self.module)
        return getattr(module, self.cls)


class ContainerRabbitMQ(Container):
    name = "RabbitMQ container"
    module, cls, image, port = "testcontainers.rabbitmq", "RabbitMqContainer", "rabbitmq:3", 5672

    def url_for(self, host: str, port: int) -> str:
        return f"amqp://guest:guest@{host}:{port}//"


class ContainerRedis(Container):
    name = "Redis container"
    module, cls, image, port = "testcontainers.redis", "RedisContainer", "redis:7", 6379

    def url_for(self, host: str, port: int) -> str:
        return f"redis://{host}:{port}{self.wanted.path or '/0'}"


class ContainerPostgres(Container):
    """The URL's user and database, with a password made up for this container (the
    image wants one; a local server trusts instead)."""

    name = "PostgreSQL container"
    module, cls, image, port = "testcontainers.postgres", "PostgresContainer", "postgres:16", 5432

    def __init__(self, service: Service, url: str) -> None:
        super().__init__(service, url)
        self.user = unquote(self.wanted.username or "postgres")
        self.database = unquote(self.wanted.path.lstrip("/")) or "test"
        self.password = uuid.uuid4().hex

    def create(self, container_class: type) -> object:
        return container_class(self.image, username=self.user, password=self.password, dbname=self.database)

    def url_for(self, host: str, port: int) -> str:
        return (f"{self.wanted.scheme or 'db+postgresql'}://{quote(self.user, safe='')}:{self.password}@{host}:{port}/"
                f"{quote(self.database, safe='')}")


# -- the command ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.services", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("services", help=f"comma-separated: {', '.join(SERVICES)}")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    unknown = [n for n in args.services.split(",") if n not in SERVICES]
    if unknown or not command:
        parser.error(f"unknown service {', '.join(unknown)}" if unknown else "no command given after --")
    started: list = []
    env = dict(os.environ)
    try:
        for name in args.services.split(","):
            problem = _ensure(SERVICES[name], env, started)
            if problem:
                print(problem, file=sys.stderr)
                return 1
        return _run(command, env)
    finally:
        for server in reversed(started):
            print(f"stopping the {server.name} started for this run", file=sys.stderr)
            server.stop()


def _run(command: list[str], env: dict[str, str]) -> int:
    """Run `command` to its end. Ctrl-C reaches it through the terminal, and a
    SIGTERM sent to this script is passed on: either way it finishes its own
    shutdown (a worker stopping warmly) while the services it uses are still up."""
    process = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue  # the command got the same Ctrl-C; wait for it to finish


def _ensure(service: Service, env: dict[str, str], started: list) -> str | None:
    """Make `service` answer for the command (updating `env`); a problem to print, or None."""
    url = env.get(service.env) or service.default_url
    point = endpoint(url)
    action = decide(point, service)
    if action == USE:
        return None
    if action == REMOTE:
        return f"nothing answers at {point.host}:{point.port} ({service.env}); start {service.title} there"
    if action == INSTALL:
        return install_hint(service, point)
    print(f"nothing answers at {point.host}:{point.port}; starting a private {service.title} "
          f"({service.server if action == LOCAL else 'Docker container'}) for this run", file=sys.stderr)
    if action == LOCAL and service is not RABBITMQ:
        server = (LocalRedis if service is REDIS else LocalPostgres)(point.port)
        started.append(server)
        server.start()
    elif action == LOCAL:
        node = LocalRabbitMQ(point.port)
        started.append(node)
        node.start()
        parts = urlsplit(url.split(";")[0].strip())
        vhost = unquote(parts.path[1:]) if parts.path not in ("", "/", "//") else "/"
        node.add_user(unquote(parts.username or "guest"), unquote(parts.password or "guest"), vhost)
        env.update(node.env)
    else:
        container = CONTAINERS[service.name](service, url)
        started.append(container)
        container.start()
        env.update(container.env)
    return None


CONTAINERS: dict[str, type[Container]] = {"rabbitmq": ContainerRabbitMQ, "redis": ContainerRedis,
                                          "postgres": ContainerPostgres}

if __name__ == "__main__":
    sys.exit(main())
