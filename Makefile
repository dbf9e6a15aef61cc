# make demo : declare routing.yaml, publish routed tasks, show where each landed
# make test : unit tests and integration tests against RabbitMQ
# Both start a private RabbitMQ (and Redis, PostgreSQL) for the run when nothing answers
# at its URL (scripts/services.py), and stop it afterwards.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration fuzz reliability bench clean cluster cluster-stop cluster-test cluster-test-ci
WITH_BROKER := $(BIN)/python -m scripts.services rabbitmq --
# The demo keeps results in Redis; the tests use Redis and PostgreSQL too.
WITH_DEMO_SERVICES := $(BIN)/python -m scripts.services rabbitmq,redis --
WITH_TEST_SERVICES := $(BIN)/python -m scripts.services rabbitmq,redis,postgres --

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(WITH_DEMO_SERVICES) $(BIN)/python examples/demo.py

NODE_DEPS := examples/node/node_modules/.installed

# The Node.js client test uses amqplib; installed when npm is present.
$(NODE_DEPS): examples/node/package.json
	if command -v npm >/dev/null 2>&1; then npm install --prefix examples/node --silent --no-audit --no-fund && touch $(NODE_DEPS); fi

test: $(STAMP) $(NODE_DEPS)
	$(WITH_TEST_SERVICES) $(BIN)/python -m pytest tests integration

unit: $(STAMP)
	$(BIN)/python -m pytest tests

integration: $(STAMP)
	$(WITH_TEST_SERVICES) $(BIN)/python -m pytest integration

# Property tests with many random examples (the suite runs them derandomized); what
# they find becomes a plain unit test. FUZZ_PROFILE=long (20,000 examples per test).
FUZZ_PROFILE ?= long
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=$(FUZZ_PROFILE) $(BIN)/python -m pytest --timeout=0 -p no:cacheprovider \
		tests/test_loader_fuzz.py tests/test_topic_matching.py tests/test_protocol.py integration/test_chaos_config.py

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

# A 3-node RabbitMQ cluster on this machine (amqtask-c1..3, AMQP on 127.0.0.1:5781-5783;
# see docs/cluster.md); cluster-stop stops it and deletes its data.
cluster: $(STAMP)
	$(BIN)/python -m integration.cluster start

cluster-stop: $(STAMP)
	$(BIN)/python -m integration.cluster stop

# Node loss, partitions and rolling restarts on that cluster (integration/test_cluster.py):
# cluster-test-ci is the reduced set (about 4 minutes), cluster-test the full one (the
# rolling restart drains 20,000 tasks). Both start the cluster and always stop it and
# delete its data at the end, failed or not.
CLUSTER_RUN = trap '$(BIN)/python -m integration.cluster stop' EXIT; trap 'exit 130' INT TERM; $(BIN)/python -m integration.cluster stop && \
	$(BIN)/python -m integration.cluster start && $(BIN)/python -m pytest -p no:cacheprovider integration/test_cluster.py
cluster-test-ci: $(STAMP)
	AMQTASK_CLUSTER_TESTS=ci; export AMQTASK_CLUSTER_TESTS; $(CLUSTER_RUN)

cluster-test: $(STAMP)
	AMQTASK_CLUSTER_TESTS=full; export AMQTASK_CLUSTER_TESTS; $(CLUSTER_RUN)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
