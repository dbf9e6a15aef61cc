"""Scenario 6, bad configuration: generated YAML and mutations of the real
routing.yaml never make `amqtask check` crash or hang: a result, or errors."""
from __future__ import annotations

import os
import random
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amqtask.topology.loader import check_text

from .conftest import ROOT
from .reliability import report

EXAMPLE = (ROOT / "routing.yaml").read_text()
SCALE = float(os.environ.get("AMQTASK_CHAOS_SCALE", "1"))
checked = {"generated": 0, "mutated": 0, "crashes": 0}


def must_not_crash(text: str) -> None:
    result = check_text(text, source="fuzz.yaml", environ={})
    assert result.settings is not None or result.errors, "neither settings nor errors"
    for problem in result.problems:
        assert str(problem).startswith("fuzz.yaml:")


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=12))
keys = st.sampled_from(["broker", "defaults", "exchanges", "queues", "routes", "tasks", "worker", "results", "url",
                        "type", "bindings", "exchange", "routing_key", "queue", "task", "max_priority",
                        "queue_type", "arguments", "x-match", "dead_letter_exchange", "options", "concurrency"])
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys | st.text(max_size=6), inner, max_size=5)),
                     max_leaves=25)


@settings(max_examples=max(int(400 * SCALE), settings().max_examples), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.dictionaries(keys, trees, max_size=6))
def test_generated_structures(tree):
    import yaml

    must_not_crash(yaml.safe_dump(tree, allow_unicode=True))
    checked["generated"] += 1


@settings(max_examples=max(int(300 * SCALE), settings().max_examples), deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    must_not_crash(text)
    checked["generated"] += 1


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        kind = rng.randrange(7)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif kind == 2 and lines[i]:
            j = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + rng.choice(":-[]{}&*!|>'\"#%@` \t") + lines[i][j + 1:]
        elif kind == 3:
            lines[i] = "  " + lines[i]
        elif kind == 4:
            lines[i] = lines[i].replace("tasks", rng.choice(["task", "", "amq.x", "tasks.#", "*"]))
        elif kind == 5:
            lines[i] = lines[i].replace("10", rng.choice(["0", "256", "-1", "ten", "1e9", "~"]))
        else:
            lines.insert(i, rng.choice(["x: &a [*a]", "  bogus: 1", "queues: ~", "- a", "worker: {pool: gevent}"]))
    return "\n".join(lines) + "\n"


def test_mutations_of_the_real_file():
    rng = random.Random(1234)
    for _ in range(int(1500 * SCALE)):
        must_not_crash(mutate(EXAMPLE, rng))
        checked["mutated"] += 1


def test_check_command_exits_0_or_2_with_a_message(tmp_path):
    rng = random.Random(99)
    outcomes = {0: 0, 2: 0}
    for n in range(int(12 * SCALE)):
        path = tmp_path / f"m{n}.yaml"
        path.write_text(mutate(EXAMPLE, rng) if n else EXAMPLE)
        run = subprocess.run([sys.executable, "-m", "amqtask.cli", "check", "--config", str(path)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode in (0, 2), run.stderr
        assert "Traceback" not in run.stderr and (run.stdout or run.stderr)
        outcomes[run.returncode] += 1
    report("bad configuration", load=f"{checked['generated']} generated + {checked['mutated']} mutated files, "
           f"{sum(outcomes.values())} via the CLI", faults="invalid YAML, unknown keys, wrong types, alias bombs",
           confirmed="-", executed="-", duplicated="-", lost=0, crashes=0,
           recovery=f"exit 0: {outcomes[0]}, exit 2: {outcomes[2]}")
