# One command each: `make quickstart` runs the main job, `make test` runs the tests.
# Both create the project venv (.venv) with pinned versions on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv quickstart quickstart-digits test test-slow lint format

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

lint: $(STAMP)
	$(BIN)/ruff check lop_ray tests bench
	$(BIN)/ruff format --check lop_ray tests bench

test: lint
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/pytest -q

test-slow: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/pytest -q -m slow

format: $(STAMP)
	$(BIN)/ruff check --fix lop_ray tests bench
	$(BIN)/ruff format lop_ray tests bench
