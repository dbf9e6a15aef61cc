"""Redis and PostgreSQL for the result backend tests: where they are, whether they
answer (in CI a missing one fails the run), and per-test configs and cleanup."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from .conftest import RESULTS_YAML, ROOT, worker_yaml

REDIS_URL = os.environ.get("AMQTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("AMQTASK_TEST_POSTGRES_URL", "db+postgresql://postgres@127.0.0.1:5432/test")


def require(what: str, problem: str | None) -> None:
    if problem:
        message = f"{what} is not reachable ({problem})"
        if os.environ.get("CI"):
            pytest.fail(message + "; in CI it is required (.ci/run starts it)")
        pytest.skip(message)  # outside CI only (above, CI fails instead)


def redis_problem() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as exc:  # any failure means "no usable Redis"
        return f"{type(exc).__name__}: {exc}"


def postgres_problem() -> str | None:
    import psycopg

    from amqtask.results.postgres import conninfo

    try:
        psycopg.connect(conninfo(POSTGRES_URL), connect_timeout=2).close()
        return None
    except Exception as exc:  # any failure means "no usable PostgreSQL"
        return f"{type(exc).__name__}: {exc}"


def config_with_backend(tmp_path: Path, prefix: str, backend: str, extra: str = "") -> Path:
    """The worker test topology with results in `backend` (60 s expiry, extended)."""
    path = tmp_path / f"routing-{abs(hash(backend)) % 10**6}.yaml"
    section = f"results:\n  backend: '{backend}'\n  expires: 60s\n  extended: true\n{extra}"
    path.write_text(worker_yaml(prefix).replace(RESULTS_YAML, section))
    return path


def read_in_another_process(config: Path, task_id: str, timeout: float = 30, propagate: bool = True) -> dict:
    """AsyncResult(task_id, app=App(config=...)).get() in a fresh Python process."""
    code = (
        "import json, sys\n"
        "from amqtask import App\n"
        "from amqtask.results import AsyncResult\n"
        f"app = App('reader', config={str(config)!r})\n"
        f"r = AsyncResult({task_id!r}, app=app)\n"
        "try:\n"
        f"    value = r.get(timeout={timeout}, propagate={propagate})\n"
        "    out = {'value': value if not isinstance(value, BaseException) else repr(value)}\n"
        "except Exception as exc:\n"
        "    out = {'raised': type(exc).__name__, 'message': str(exc)}\n"
        "out.update(state=r.state, name=r.name, date_done=str(r.date_done))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout + 30,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_a_child(work: Callable[[], object]) -> int:
    """Run `work()` in a forked child (as gunicorn --preload does with the App its
    master built); its exit code: 0 when it returned, 1 when it raised, -14 (SIGALRM)
    when it hung for 20 seconds."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler: just end
            signal.alarm(20)
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def start_celery_worker(queue: str, broker_url: str, backend: str, **env: str) -> subprocess.Popen:
    """A real Celery worker (integration/celery_peer) consuming `queue`."""
    environment = {**os.environ, "AMQTASK_BROKER_URL": broker_url, "PEER_QUEUE": queue, "PEER_BACKEND": backend,
                   "PYTHONPATH": str(ROOT / "integration" / "celery_peer"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "solo", "--without-mingle",
         "--without-gossip", "--without-heartbeat", "-l", "WARNING"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out or ""
