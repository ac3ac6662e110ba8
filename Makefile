# Two commands from a fresh clone:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export JOURNEY_HOME ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(JOURNEY_HOME)/dagster
# The venv's tools (dbt, dagster, journey) first on PATH, activated or not.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup browser demo test lint ui bench clean

$(BIN)/journey: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/dbt parse --quiet --project-dir dbt_project --profiles-dir dbt_project
	@touch $(BIN)/journey

# The browser test drives Debian's Chromium; installed here when apt-get is available (root).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	  || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	       && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	       || echo "Chromium not installed: the browser test will skip (apt-get install chromium chromium-driver)"; }

setup: $(BIN)/journey

demo: setup
	$(BIN)/journey demo

# Two workers by default (TEST_WORKERS=0 runs serially); a test module stays on one worker,
# so its module-scoped fixtures (a simulated loop, a Dagster instance) are built once.
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check journey_pipeline tests bench
	$(BIN)/ruff format --check journey_pipeline tests bench

ui: setup
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: setup
	$(BIN)/journey bench

clean:
	rm -rf data dbt_project/target dbt_project/logs
