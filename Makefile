# Two commands do all set-up on a fresh machine:
#   make run    install into .venv and run the hub on embedded defaults (SQLite, 127.0.0.1:5000)
#   make test   install with test dependencies and run the whole test suite (trial)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 5000
DATA ?= $(CURDIR)/data
TRIAL_ARGS ?=
TESTS ?= tests
STRESS_RUNS ?= 5

.PHONY: run test stress-test check lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	DATA="$(DATA)" $(VENV)/bin/twistd --nodaemon --pidfile= cocalc-hub --port $(PORT)

# Third-party socket.io clients (npm) for the conat interop tests and benchmarks.
tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/node --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the conat tests that run node clients will be skipped (or fail under CI=true)"; fi

test: $(VENV)/.test-installed tests/node/node_modules/.installed
	$(PY) .ci/trial-summary -- $(PY) -m twisted.trial $(TRIAL_ARGS) $(TESTS)

# The same test command STRESS_RUNS times in a row (stopping at the first failure) while
# .ci/burn keeps every core busy: the suite must not depend on an idle machine.
stress-test: $(VENV)/.test-installed tests/node/node_modules/.installed
	@$(PY) .ci/burn -- $(PY) .ci/stress $(STRESS_RUNS) -- $(PY) .ci/trial-summary -- $(PY) -m twisted.trial $(TRIAL_ARGS) $(TESTS)

check: $(VENV)/.test-installed
	$(VENV)/bin/mypy --strict cocalc_hub
	$(VENV)/bin/ruff check cocalc_hub tests benchmarks twisted

bench: $(VENV)/.test-installed tests/node/node_modules/.installed
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp* _stress .mypy_cache
