"""Clients we did not write publish tasks that an amqtask worker runs: Node.js with
amqplib and the shell with amqp-tools (librabbitmq), using the examples as shipped."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from urllib.parse import quote

import pytest

from amqtask.brokerurl import parse_broker_urls

from .conftest import ROOT


def amqp_url(broker_url: str) -> str:
    u = parse_broker_urls(broker_url)[0]
    return f"amqp://{quote(u.username)}:{quote(u.password)}@{u.host}:{u.port}/{quote(u.vhost, safe='')}"


def require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed ({hint}); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + " (in CI this fails instead)")
    return path


def test_node_amqplib_publishes_and_reads_the_result(harness, broker_url):
    node = require("node", "Node.js")
    if not (ROOT / "examples" / "node" / "node_modules" / "amqplib").exists():
        message = "amqplib is not installed: npm install --prefix examples/node"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message + " (in CI this fails instead)")
    harness.start("-P", "threads")
    run = subprocess.run([node, "examples/node/publish.js", harness.queue, "projq.tasks.add", "[2,3]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "AMQP_URL": amqp_url(broker_url)})
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert (reply["status"], reply["result"]) == ("SUCCESS", 5)


def test_shell_amqp_tools_publish_and_read_the_result(harness, broker_url):
    require("amqp-publish", "Debian package amqp-tools")
    harness.start("-P", "threads")
    run = subprocess.run(["sh", "examples/shell/publish.sh", harness.queue, "projq.tasks.add", "[20,22]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "AMQP_URL": amqp_url(broker_url)})
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert (reply["status"], reply["result"]) == ("SUCCESS", 42)


def test_minimal_message_from_the_docs_runs(harness, broker_url):
    """docs/protocol.md's minimal message, pasted into amqp-publish, is executed."""
    require("amqp-publish", "Debian package amqp-tools")
    worker = harness.start("-P", "threads", "-l", "DEBUG")
    doc = (ROOT / "docs" / "protocol.md").read_text()
    command = doc.split("<!-- minimal-message -->")[1].split("```sh")[1].split("```")[0]
    command = command.replace("web_tasks", harness.queue).replace("amqp://guest:guest@127.0.0.1:5672",
                                                                    amqp_url(broker_url))
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    harness.wait_for(lambda: "Task projq.tasks.add[hello-1] succeeded" in harness.output(worker),
                     what="the minimal message to run")
