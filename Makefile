# make demo : declare routing.yaml, publish routed tasks, show where each landed
# make test : unit tests and integration tests against RabbitMQ
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration reliability bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

NODE_DEPS := examples/node/node_modules/.installed

# The Node.js client test uses amqplib; installed when npm is present.
$(NODE_DEPS): examples/node/package.json
	if command -v npm >/dev/null 2>&1; then npm install --prefix examples/node --silent --no-audit --no-fund && touch $(NODE_DEPS); fi

test: $(STAMP) $(NODE_DEPS)
	$(BIN)/python -m pytest tests integration

unit: $(STAMP)
	$(BIN)/python -m pytest tests

integration: $(STAMP)
	$(BIN)/python -m pytest integration

# The fault and fuzz scenarios alone, writing docs/reliability.md from the run.
# AMQTASK_CHAOS_SCALE=10 make reliability runs ten times the CI load.
reliability: $(STAMP)
	rm -f .reliability.jsonl
	AMQTASK_RELIABILITY_OUT=.reliability.jsonl $(BIN)/python -m pytest integration/test_chaos.py integration/test_chaos_config.py
	$(BIN)/python -m integration.reliability .reliability.jsonl > docs/reliability.md
	rm -f .reliability.jsonl

# Side by side with Celery and Dramatiq (bench-only extras); rewrites docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
