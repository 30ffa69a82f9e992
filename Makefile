# norm: `make run` starts the demo on the embedded default (SQLite + filesystem broker),
# `make test` runs ruff, mypy and the whole suite against PostgreSQL and Redis.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall only when pyproject.toml changed since the last install.
STAMP := $(VENV)/.installed-pyproject

# make run ADDR=127.0.0.1:8001 when 8000 is taken.
ADDR ?= 127.0.0.1:8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/norm
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run test lint format services clean

install: $(STAMP)

# pyproject.toml's requires-python. An older python3 (Ubuntu 22.04's 3.10) failed deep in
# pip, on the first dependency that needs 3.11, and left a .venv every later run reused
# whatever PYTHON it was given.
PYTHON_OK := import sys; sys.exit(sys.version_info < (3, 11))

# A venv that failed halfway (Debian without python3-venv: no ensurepip) leaves
# $(PY) behind, and every later run would fail on its missing pip instead.
$(PY):
	@$(PYTHON) -c '$(PYTHON_OK)' 2>/dev/null || { echo "norm needs Python 3.11 or later, and $(PYTHON) is $$(command -v $(PYTHON) >/dev/null && $(PYTHON) --version 2>&1 || echo 'not found'): give another, e.g. make $(or $(firstword $(MAKECMDGOALS)),install) PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c '$(PYTHON_OK)' || { echo "$(VENV) was made with $$($(PY) --version 2>&1), and norm needs Python 3.11 or later: make clean, then make $(or $(firstword $(MAKECMDGOALS)),install) PYTHON=python3.11"; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

# rundemo makes its var/ (NORM_VAR_DIR, else var/ here) and the broker's folders in it.
run: $(STAMP)
	$(PY) manage.py rundemo --addr $(ADDR)

# Where the tests will look for them, so TEST_DATABASE_URL=... is checked and started too.
services: $(STAMP)
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) PY=$(PY) scripts/ensure-services.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .

# The @novu/framework app the e2e tests drive; reinstalled when its lockfile changes.
NOVU_BRIDGE := tests/e2e/novu_bridge
$(NOVU_BRIDGE)/node_modules: $(NOVU_BRIDGE)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: the Novu framework e2e tests will skip"; exit 0; }; \
	cd $(NOVU_BRIDGE) && npm ci --no-audit --no-fund && touch node_modules

# The suite runs in a process per core (pytest-xdist), each on its own database and
# Redis db (tests/conftest.py); then the tests marked `alone`, which restart PostgreSQL
# under every other test's feet, by themselves. TEST_PROCESSES=1 runs one process.
# worksteal: an idle process takes tests queued for another, so no long test (a fault,
# a demo run) is left to run last while the other process waits.
TEST_PROCESSES ?= auto
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL)

test: $(STAMP) services lint $(NOVU_BRIDGE)/node_modules
	$(TEST_ENV) $(PY) -m pytest -n $(TEST_PROCESSES) --maxprocesses 8 --dist worksteal -m "not alone"
	$(TEST_ENV) $(PY) -m pytest -m alone tests/faults

clean:
	rm -rf $(VENV)
