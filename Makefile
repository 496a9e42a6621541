# One command each: `make quickstart` runs the main job, `make test` runs the tests.
# Both create the project venv (.venv) with pinned versions on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser quickstart quickstart-digits paper-regression test test-slow lint format

$(STAMP): requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/lop-ray sweep sweeps/quickstart.yaml

quickstart-digits: $(STAMP)
	$(BIN)/lop-ray sweep sweeps/quickstart_digits.yaml

# the paper's 46 regression files at the paper's scale, one Ray session, a figure per file
paper-regression: $(STAMP)
	$(BIN)/lop-ray sweep sweeps/regression/*/*.yaml --storage results/paper-regression
	$(BIN)/lop-ray report --panels results/paper-regression/*/

lint: $(STAMP)
	$(BIN)/ruff check lop_ray tests bench
	$(BIN)/ruff format --check lop_ray tests bench

# Debian's Chromium, which tests/test_mlflow_ui.py drives headless through Playwright
browser:
	command -v chromium >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium; }

test: lint browser
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/pytest -q

test-slow: $(STAMP) browser
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/pytest -q -m slow

format: $(STAMP)
	$(BIN)/ruff check --fix lop_ray tests bench
	$(BIN)/ruff format lop_ray tests bench
