"""A RabbitMQ node of the tests' own, on free ports, for what must never be done to
the shared broker: restarting it, raising a memory alarm, adding users. Started as
the rabbitmq user with its own name, data directory and (empty) plugin list, and
stopped and deleted at the end. `private_broker` is one such node per test session."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from scripts.services import free_port  # noqa: F401 - the tests' one way to a free port


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class PrivateBroker:
    """A RabbitMQ node of our own on free ports (for a memory alarm, which must never
    be raised on the shared broker). Started as the rabbitmq user, stopped at the end."""

    def __init__(self, tmp_root: Path | None = None) -> None:
        import shutil
        import uuid

        self.id = f"amqmon-{uuid.uuid4().hex[:8]}"
        self.node = f"{self.id}@localhost"
        self.port, dist = free_port(), free_port()
        self.base = Path("/tmp") / self.id
        self.base.mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.port}\n")
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        for item in self.base.iterdir():
            shutil.chown(item, "rabbitmq", "rabbitmq")
        env = {**os.environ, "RABBITMQ_NODENAME": self.node, "RABBITMQ_DIST_PORT": str(dist),
               "RABBITMQ_BASE": str(self.base), "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
               "RABBITMQ_LOG_BASE": str(self.base / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
               "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"), "RABBITMQ_PID_FILE": str(self.base / "pid")}
        subprocess.run(["rabbitmq-server", "-detached"], env=env, cwd="/tmp", check=True, timeout=60,
                       capture_output=True)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        try:
            # -detached returns before the node registers; await_startup fails at once until it has
            wait_until(lambda: self._run("await_startup", "--timeout", "60").returncode == 0, 180,
                       f"RabbitMQ node {self.node} to start", interval=1.0)
        except BaseException:
            self.stop()
            raise

    def _run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(["rabbitmqctl", "-n", self.node, *args], capture_output=True, text=True,
                              timeout=timeout)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        result = self._run(*args, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def stop(self) -> None:
        """Stop this node (ours alone): rabbitmqctl stop, else its own pid from its pid file."""
        import shutil

        try:
            if self._run("stop", timeout=120).returncode != 0:
                pid_file = self.base / "pid"
                if pid_file.exists() and pid_file.read_text().strip().isdigit():
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def has_rabbitmq_server() -> bool:
    import shutil

    return shutil.which("rabbitmq-server") is not None and shutil.which("rabbitmqctl") is not None


@pytest.fixture(scope="session")
def private_broker():
    """A RabbitMQ node for this test session alone (in CI, rabbitmq-server must be there)."""
    if not has_rabbitmq_server():
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is not installed; in CI it is required")
        pytest.skip("needs rabbitmq-server (in CI this fails instead)")
    broker = PrivateBroker()
    yield broker
    broker.stop()
