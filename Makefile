# The two commands a new user runs on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SETUP_HASH := $(shell cat setup.py | md5sum | cut -c1-12)
# `make demo` installs lifejax alone; `make test` adds the test extras (HF
# transformers + torch for parity tests and peers, apache-beam, datasketch,
# the notebook runner, pytest). Each stamp names setup.py's hash, so editing
# setup.py reinstalls.
CORE_STAMP := $(VENV)/.installed-core-$(SETUP_HASH)
STAMP := $(VENV)/.installed-test-$(SETUP_HASH)
GIN ?= gin_configs/lifecycle/fact_world.gin
PYTEST_ARGS ?=
# Two test workers: XLA compiles on one thread, and most tests are mostly
# compilation, so two processes use both cores (tests/conftest.py keeps
# tests that share fixtures on one worker).
TEST_WORKERS ?= 2

.PHONY: install demo test bench clean

$(CORE_STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	rm -f $(VENV)/.installed-core-*
	touch $(CORE_STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(CORE_STAMP) $(STAMP)

install: $(STAMP)

# Keep freed memory mapped: XLA:CPU allocates each step's temporaries anew,
# and glibc's defaults make every step page-fault them in again
# (experiments/bench_train_step/README.md).
MALLOC_TUNING := glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

# One XLA host device per core: the lifecycle's evals and rollouts generate
# data parallel over them (GenerationSpec.devices = -1), while training
# runs on one device whose ops use every core (fact_world.gin's mesh). A
# device count already in XLA_FLAGS wins (it comes later).
HOST_DEVICES ?= $(shell $(PYTHON) -c 'import os; print(os.cpu_count() or 1)')

demo: $(CORE_STAMP)
	GLIBC_TUNABLES=$(MALLOC_TUNING) JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} XLA_FLAGS="--xla_force_host_platform_device_count=$(HOST_DEVICES) $${XLA_FLAGS:-}" $(PY) -m lifejax.main --gin_file=$(GIN)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) tools/bench_train_step.py --model=cpu10m --peer

clean:
	rm -rf $(VENV) runs .pytest_cache
