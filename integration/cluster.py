"""A 3-node RabbitMQ cluster on this machine, from the rabbitmq-server package.

Nodes amqtask-c1..3@localhost listen for AMQP on 127.0.0.1:5781-5783, talk among
themselves on distribution ports 25781-25783 and keep their data under
$AMQTASK_CLUSTER_DIR (/tmp/amqtask-cluster). Each is a `scripts.services.LocalRabbitMQ`
with a fixed name, data directory and distribution port; they share the rabbitmq
user's Erlang cookie, and nodes 2 and 3 join node 1 (`rabbitmqctl join_cluster`).
Partition handling is RabbitMQ's recommended `pause_minority`. Nothing here ever
touches another node (the shared broker on 5672 included): every command names one
of these three nodes.

    python -m integration.cluster start    # make cluster
    python -m integration.cluster stop     # make cluster-stop: stop the nodes, delete their data
    python -m integration.cluster status
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from scripts.services import Endpoint, LocalRabbitMQ, answers

BASE = Path(os.environ.get("AMQTASK_CLUSTER_DIR", "/tmp/amqtask-cluster"))
SIZE = 3
AMQP_PORT = 5780  # + node index
DIST_PORT = 25780  # + node index
CONFIG = "cluster_partition_handling = pause_minority\n"
# A quorum queue's at-least-once dead-lettering (the quorum delay cascade) waits this
# long for the target queue's confirm before sending again; RabbitMQ's default is 180 s,
# so a countdown passing through a level whose next level's leader died would be
# 3 minutes late. See docs/cluster.md.
DLX_CONFIRM_TIMEOUT_MS = 5000
ADVANCED = f"[{{rabbit, [{{dead_letter_worker_publisher_confirm_timeout, {DLX_CONFIRM_TIMEOUT_MS}}}]}}].\n"


class ClusterNode(LocalRabbitMQ):
    """One member: started, stopped (keeping its data), killed and restarted at will."""

    def __init__(self, index: int, base: Path = BASE) -> None:
        super().__init__(AMQP_PORT + index, node=f"amqtask-c{index}@localhost", home=base / f"c{index}",
                         dist_port=DIST_PORT + index, config=CONFIG, advanced=ADVANCED)
        self.index = index
        self.name = f"c{index}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def answering(self) -> bool:
        return answers(Endpoint("127.0.0.1", self.port), timeout=0.5)

    def ctl(self, *args: str, timeout: float = 90, check: bool = True) -> str:
        result = subprocess.run(["rabbitmqctl", "-n", self.node, "-q", *args], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.node} {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def beam_pids(self) -> list[int]:
        """The Erlang VMs running this node: beam.smp processes whose environment names
        this node and this data directory. Found afresh on every call, never from the
        node's pid file: RabbitMQ deletes that file while the VM is still shutting
        down, and a stale one could name a pid since reused by another process."""
        wanted = {f"RABBITMQ_NODENAME={self.node}".encode(), f"RABBITMQ_MNESIA_BASE={self.home / 'mnesia'}".encode()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if not os.path.basename(os.readlink(entry / "exe")).startswith("beam"):
                    continue
                if wanted <= set((entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return found

    def alive(self) -> bool:
        return bool(self.beam_pids())

    def kill(self) -> None:
        """kill -9 the node's Erlang VM, as a crashed machine would go."""
        for pid in self.beam_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._wait_gone()

    def halt(self, timeout: float = 120) -> None:
        """Stop the node warmly (`rabbitmqctl stop`), keeping its data; returns once its
        VM has exited (`rabbitmqctl stop` returns before that)."""
        if self.alive():
            self.ctl("stop", timeout=timeout, check=False)
        self._wait_gone(timeout)

    def _wait_gone(self, timeout: float = 60) -> bool:
        """Wait until no VM of this node runs and its port is closed; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.alive() or self.answering():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        if self.process is not None:  # started from here: reap the wrapper
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return True

    def remove(self) -> None:
        """Stop the node (killing it if it will not stop) and delete its data, once its
        VM has exited."""
        try:
            self.halt(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.alive():
            self.kill()
        if self.alive():
            raise RuntimeError(f"{self.node} still runs (pids {self.beam_pids()}); its data is kept")
        shutil.rmtree(self.home, ignore_errors=True)


class Cluster:
    def __init__(self, base: Path = BASE, size: int = SIZE) -> None:
        self.base = base
        self.nodes = [ClusterNode(i, base) for i in range(1, size + 1)]

    @property
    def urls(self) -> str:
        """Every node's URL, `;`-separated, as a client's broker.url."""
        return ";".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        """By short name (c1) or Erlang node name (amqtask-c1@localhost)."""
        for node in self.nodes:
            if name in (node.name, node.node):
                return node
        raise KeyError(name)

    def running_nodes(self, via: ClusterNode | None = None) -> list[str]:
        """The cluster's running members as one node sees them."""
        for node in [via] if via else self.nodes:
            if not node.alive():
                continue
            try:
                status = json.loads(node.ctl("cluster_status", "--formatter", "json", timeout=60))
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                continue
            return sorted(status.get("running_nodes", []))
        return []

    def up(self) -> bool:
        return sorted(n.node for n in self.nodes) == self.running_nodes() and all(n.answering() for n in self.nodes)

    def start(self) -> None:
        """Start the nodes that are not running and join them to the first one."""
        if self.up():
            return
        self.base.mkdir(parents=True, exist_ok=True)
        errors: list[BaseException] = []

        def start(node: ClusterNode) -> None:
            try:
                if not node.alive():
                    node.start()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            if first.node in self.running_nodes(node):
                continue
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        self.wait_up()

    def wait_up(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.up():
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not come up: running {self.running_nodes()}")

    def restart(self, node: ClusterNode) -> None:
        """Start a stopped or killed member again (it rejoins with its data)."""
        node.start()
        self.wait_up()

    def stop(self) -> None:
        """Stop every node (all at once), wait until their VMs have exited and delete
        the cluster's data."""
        errors: list[BaseException] = []

        def remove(node: ClusterNode) -> None:
            try:
                node.remove()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=remove, args=(node,)) for node in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        shutil.rmtree(self.base, ignore_errors=True)

    def queue_leader(self, queue: str, vhost: str = "/") -> ClusterNode:
        """The node holding a quorum queue's leader (or a classic queue's process)."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                rows = json.loads(node.ctl("list_queues", "-p", vhost, "name", "leader", "pid", "--formatter",
                                           "json", timeout=60))
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                continue
            for row in rows:
                if row.get("name") == queue:
                    where = row.get("leader") or str(row.get("pid", "")).partition("@")[0].strip("<")
                    for candidate in self.nodes:
                        if candidate.node == where or candidate.node.partition("@")[0] in where:
                            return candidate
            break
        raise LookupError(f"no node holds {queue!r}")


def main(argv: list[str]) -> int:
    cluster = Cluster()
    command = argv[0] if argv else "status"
    if command == "start":
        started = time.monotonic()
        cluster.start()
        print(f"cluster up in {time.monotonic() - started:.0f}s: {', '.join(n.node for n in cluster.nodes)}")
        print(f"AMQTASK_BROKER_URL='{cluster.urls}'")
    elif command == "stop":
        cluster.stop()
        print("cluster stopped, data removed")
    elif command == "status":
        running = cluster.running_nodes()
        print("running:", ", ".join(running) or "none")
        return 0 if cluster.up() else 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
