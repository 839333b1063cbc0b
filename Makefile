# Two commands: `make lab` runs the whole lab, `make test` runs the tests.
# Each creates .venv with pip when it is missing (only Python 3.11 is needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.smdlab-installed

.PHONY: lab lab-quick test test-slow lint bench venv gpu-data

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

# Copy the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, MIT, 30 MB) into data/ (git-ignored)
# so that a GPU machine, which reaches nothing outside the working tree, gets them: name
# data/fashion-mnist in the device tool's carry; scripts/gpu_images.sh looks there first.
FMNIST ?= /usr/share/datasets/fashion-mnist
gpu-data:
	@test -f $(FMNIST)/train-images-idx3-ubyte.gz || { echo "error: no Fashion-MNIST IDX files in $(FMNIST) (apt-get install dataset-fashion-mnist, or FMNIST=DIR)" >&2; exit 2; }
	mkdir -p data/fashion-mnist.tmp
	cp $(FMNIST)/*-ubyte.gz data/fashion-mnist.tmp/
	rm -rf data/fashion-mnist && mv data/fashion-mnist.tmp data/fashion-mnist
	@du -sh data/fashion-mnist
