# Quick start:  make demo   (train + evaluate on the bundled digits)
#               make test   (the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Persistent XLA compilation cache, shared by every checkout of this machine's user (the key is the program and
# the jax / XLA version, so a cached entry is the same compiled code): the second run of anything compiles in seconds.
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/vdm/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES ?= 0

.PHONY: install test test-all demo clean
DEMO_DIR ?= runs/demo

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The fast suite (a few minutes on 2 cores); test-all adds the tests marked slow (training processes that are
# killed and resumed, several processes or devices, sweeps, a wheel install): what .ci/run runs.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# Trains configs/digits.py (~10 min on 2 cores), evaluates test bits/dim with the EMA
# parameters, writes samples, and checks that the samples are digits. Interrupted, the
# same command resumes; finished, it reports again (rm -rf runs/demo to start over).
demo: $(STAMP)
	$(PY) -m vdm.main --config=configs/digits.py --workdir=$(DEMO_DIR)
	$(PY) -m vdm.metrics.digits_quality $(DEMO_DIR)

clean:
	rm -rf $(VENV) .cache build *.egg-info
