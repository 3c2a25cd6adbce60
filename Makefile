# The two commands of the README. Both build .venv from the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo test chaos venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	# torch first and alone: pip then takes the CPU build where one is provided locally, CUDA elsewhere.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest

# Fault injection on a local multi-node cluster (bench/chaos.py; not part of `test`, ~minutes on 2 cores).
chaos: $(STAMP)
	$(PY) bench/chaos.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
