# Two commands on a fresh machine: `make quickstart` (main job end to end) and `make test` (test suite).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vffn-installed
# No device settings here: the entry points (python -m pretrain..., tools/, tests/conftest.py) choose CUDA or
# CPU and DeepSpeed's accelerator themselves, in vffn_megatron/device.py.

.PHONY: setup quickstart test test-slow test-network clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(PY) -m pretrain.quickstart

test: setup
	$(PY) -m pytest -m "not slow" tests

test-slow: setup
	$(PY) -m pytest -m slow tests

# Two hosts in network namespaces (root; skipped otherwise), losing one; also part of test-slow.
test-network: setup
	$(PY) -m pytest tests/test_network_two_hosts.py tests/test_pretrain_peers.py

clean:
	rm -rf runs/quickstart
