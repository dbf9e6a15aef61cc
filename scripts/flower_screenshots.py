"""Screenshots of Flower watching amqtask workers, from a real run: docs/flower-workers.png
(the dashboard), docs/flower-tasks.png (the task list), docs/flower-worker.png (one worker).

    python scripts/flower_screenshots.py [--out docs] [--worker-command TEMPLATE]

It declares a topology of its own (unique names) on the broker ($AMQTASK_BROKER_URL,
default the local one), starts two workers, Flower and a mix of tasks, takes the
pictures with headless Chromium (Debian's `chromium` package), then stops everything
and deletes what it declared.

The workers are `amqtask worker` processes with task events on (-E); --worker-command
(a template with {python}, {config}, {queue} and {name}) starts something else.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integration.monitoring import Flower, monitor_yaml, wait_until  # noqa: E402

NODE = ("{python} -m amqtask.cli worker -A integration.monitor_tasks -Q {queue} -n {name} -E -P threads -c 2 "
        "--config {config}")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


class Scene:
    """The topology, the workers and Flower, and their cleanup."""

    def __init__(self, broker_url: str, template: str, workdir: Path) -> None:
        self.prefix = f"shots{uuid.uuid4().hex[:6]}"
        self.workdir = workdir
        self.config = workdir / "routing.yaml"
        self.config.write_text(monitor_yaml(self.prefix, broker_url))
        self.env = {**os.environ, "MONITOR_TEST_CONFIG": str(self.config), "AMQTASK_BROKER_URL": broker_url,
                    "PYTHONPATH": str(ROOT)}
        os.environ["MONITOR_TEST_CONFIG"] = str(self.config)
        from integration import monitor_tasks

        self.tasks = monitor_tasks
        assert monitor_tasks.app.publisher.transport.declare(monitor_tasks.app.settings.topology) == []
        self.template = template
        self.workers: list[subprocess.Popen] = []
        self.flower: Flower | None = None

    def start_worker(self, queue: str, name: str) -> None:
        command = self.template.format(python=shlex.quote(sys.executable), config=shlex.quote(str(self.config)),
                                       queue=shlex.quote(queue), name=shlex.quote(name))
        log = open(self.workdir / f"{name}.log", "w")
        self.workers.append(subprocess.Popen(shlex.split(command), cwd=ROOT, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT))

    def check_workers(self) -> None:
        """A worker that exited is reported with the end of its log, not waited for."""
        for worker in self.workers:
            if worker.poll() is not None:
                log = self.workdir.glob("*.log")
                tails = "\n".join(p.read_text(errors="replace")[-2000:] for p in log)
                raise SystemExit(f"a worker exited with status {worker.returncode}:\n{tails}")

    def start_flower(self) -> Flower:
        class Runner:  # what Flower needs of a test runner
            env = self.env

        self.flower = Flower(Runner(), self.workdir)  # type: ignore[arg-type]
        return self.flower

    def close(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if self.flower is not None:
            self.flower.stop()
        self._delete()
        self.tasks.app.close()

    def _delete(self) -> None:
        import pika

        from amqtask.amqp.params import pika_parameters

        connection = pika.BlockingConnection(pika_parameters(self.tasks.app.settings.broker, "screenshots cleanup"))
        channel = connection.channel()
        for queue in ("work", "other", "revoked"):
            channel.queue_delete(f"{self.prefix}.{queue}")
        channel.exchange_delete(f"{self.prefix}.x")
        connection.close()


def shoot(chromium: str, url: str, out: Path, size: str) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        "--virtual-time-budget=10000", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=120)
    if not out.exists() or out.stat().st_size == 0:
        raise SystemExit(f"chromium wrote no screenshot to {out}")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--worker-command", default=NODE, help="template with {python} {config} {queue} {name}")
    parser.add_argument("--broker-url", default=os.environ.get("AMQTASK_BROKER_URL",
                                                               "amqp://guest:guest@127.0.0.1:5672//"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="amqtask-shots-") as tmp:
        scene = Scene(args.broker_url, args.worker_command, Path(tmp))
        try:
            names = [f"web@{scene.prefix}-host1", f"reports@{scene.prefix}-host2"]
            scene.start_worker(f"{scene.prefix}.work", names[0])
            scene.start_worker(f"{scene.prefix}.other", names[1])
            flower = scene.start_flower()
            wait_until(lambda: scene.check_workers() or all(flower.get("/api/workers?status=1").get(n)
                                                            for n in names), 90, "Flower to see both workers")
            t = scene.tasks
            sent = [t.add.delay(i, i * 2) for i in range(12)] + [t.sleep.delay(0.2) for _ in range(4)]
            sent += [t.fail.delay(), t.fail.delay()]
            sent += [t.other.delay(n) for n in range(3)]  # routed to the second worker's queue
            release = Path(tmp) / "release"
            running = t.block.delay(str(release))  # one still running in the pictures
            wait_until(lambda: all(flower.task(r.id).get("state") in ("SUCCESS", "FAILURE") for r in sent),
                       90, "Flower to see the tasks finish")
            wait_until(lambda: flower.task(running.id).get("state") == "STARTED", 60, "a running task")
            wait_until(lambda: flower.get(f"/api/workers?refresh=1&workername={names[0]}").get(names[0], {})
                       .get("stats"), 60, "Flower to inspect the worker")
            args.out.mkdir(parents=True, exist_ok=True)
            shoot(chromium, flower.base + "/", args.out / "flower-workers.png", "1400,700")
            shoot(chromium, flower.base + "/tasks", args.out / "flower-tasks.png", "1400,1000")
            shoot(chromium, f"{flower.base}/worker/{names[0]}", args.out / "flower-worker.png", "1400,1000")
            release.touch()
        finally:
            scene.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
