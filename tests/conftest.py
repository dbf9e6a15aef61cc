from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MINIMAL_YAML = """\
broker:
  url: ${AMQTASK_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}
defaults:
  exchange: tasks
  queue: default
  routing_key: task.default
exchanges:
  tasks: {type: topic}
  broadcast: {type: fanout}
queues:
  default:
    bindings:
      - {exchange: tasks, routing_key: "task.#"}
  web_tasks:
    bindings:
      - {exchange: tasks, routing_key: "web.#"}
    max_priority: 10
  audit:
    bindings:
      - {exchange: broadcast}
routes:
  - task: projq.tasks.add
    routing_key: web.add
  - task: "projq.web.*"
    routing_key: web.misc
  - task: "projq.notify.*"
    exchange: broadcast
"""


@pytest.fixture
def minimal_yaml() -> str:
    return MINIMAL_YAML


@pytest.fixture
def example_config() -> Path:
    return ROOT / "routing.yaml"
