"""Where the chaos scenarios put their figures: one JSON line per scenario in
$AMQTASK_RELIABILITY_OUT (when set), turned into docs/reliability.md by
`python -m integration.reliability FILE`."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

COLUMNS = ["scenario", "load", "faults", "confirmed", "executed", "duplicated", "lost", "crashes", "recovery"]


def report(scenario: str, **figures: object) -> None:
    out = os.environ.get("AMQTASK_RELIABILITY_OUT")
    line = json.dumps({"scenario": scenario, **figures}, default=str)
    print(f"reliability: {line}")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def render(results: Path) -> str:
    import importlib.metadata as md
    import subprocess

    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    broker = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True).stdout.strip() or "?"
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("amqtask", "pika", "aiormq", "uvloop", "hypothesis"))
    lines = [
        "# Reliability: what happens on a bad day",
        "",
        "Each row is a scenario in `integration/test_chaos*.py`, run against a real RabbitMQ with real",
        "`amqtask worker` processes. Every task is accounted for: confirmed by the broker at publish time,",
        "executed (recorded by the task itself), executed more than once, and lost (confirmed but never run).",
        "",
        f"Run on {dt.date.today().isoformat()}: RabbitMQ {broker}, Python {platform.python_version()}, {versions};",
        f"{os.cpu_count()} CPUs. Reproduce with `make reliability` (CI-sized; `AMQTASK_CHAOS_SCALE=10 make "
        "reliability` for ten times the load).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
    lines += ["", "Every scenario that drains asserts that lost is zero; the memory scenario measures the",
              "worker's resident memory against a backlog and then deletes it."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(Path(sys.argv[1])), end="")
