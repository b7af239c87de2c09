# The two set-up-and-run commands of the README: `make demo` and `make test`.
# Both create .venv and install the project into it; a second run skips the install while
# pyproject.toml and the C extension are unchanged (the stamp file records the install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.depthlab-installed
STACK := $(PY) infra/local/stack.py

.PHONY: setup demo test test-unit up up-autoscale down status clean-state

setup: $(STAMP)

$(STAMP): pyproject.toml training/data/_jpegroi.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

up: setup
	$(STACK) up

# The same stack with Ray's fake_multinode autoscaler: see configs/autoscale_demo.yaml.
up-autoscale: setup
	$(STACK) up --autoscale

down:
	$(STACK) down

status:
	$(STACK) status

demo: up
	$(STACK) submit -- python pipelines/compare_depths.py --config configs/demo.yaml
	$(STACK) status

test: setup
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests/unit -m "not services and not slow"

clean-state: down
	rm -rf .depthlab
