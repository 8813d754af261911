# The two set-up commands of the README. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.effv2-installed

# Data for the demo and the tests: ../shared/data when it exists (CI), else the usual lookup
# (--data-dir, $EFFV2_DATA, /usr/share/datasets/...). Never required: see README.
SHARED_DATA := $(wildcard ../shared/data)
ifneq ($(SHARED_DATA),)
export EFFV2_DATA ?= $(abspath $(SHARED_DATA))
endif

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Train the default Fashion-MNIST recipe on the CPU for a 10-minute budget (make demo BUDGET=30m;
# BUDGET=none: the recipe's 16 epochs) and print the validation-selected model's test accuracy.
BUDGET ?= 10m
demo: $(STAMP)
	$(PY) -m effv2 demo --time-budget $(BUDGET)

# Lint and format check first (ruff, configured in pyproject.toml), then the default test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(VENV)/bin/ruff format --check src tests benchmarks docs
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
