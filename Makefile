# Two commands: `make lab` runs the whole lab, `make test` runs the tests.
# Each creates .venv with pip when it is missing (only Python 3.11 is needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.smdlab-installed

.PHONY: lab lab-quick test test-slow lint bench venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev,images]'
	touch $(STAMP)

venv: $(STAMP)

lab: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m smdlab $(ARGS)

lab-quick: $(STAMP)
	$(PY) -m smdlab --quick $(ARGS)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m ruff check smdlab tests benchmarks
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q $(ARGS)

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check smdlab tests benchmarks
