# kube-router for Python: make targets are the interface. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
IMAGE ?= kube-router-py:dev
MDLINT := .tools/node_modules/.bin/markdownlint
MD_FILES := README.md docs

.DEFAULT_GOAL := help

.PHONY: help setup setup-vm test test-unit test-netpol-fuzz lint arch-diagram fmt fmt-check bench demo demo-down container clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: ## install apt packages, the virtualenv and tools (idempotent)
	@bash scripts/setup.sh

setup-vm: setup ## qemu and a Debian kernel for the VM tier in .vm/ (idempotent; make test runs it if needed)
	@bash scripts/vm/setup.sh

test: setup ## run every test tier this machine supports, with coverage
	@bash scripts/test.sh

test-unit: setup ## run only the unit tier
	@$(PY) -m pytest tests/unit -q

SEEDS ?= 20
EXAMPLES ?= 5000
test-netpol-fuzz: setup ## NetworkPolicy against the oracle: EXAMPLES random worlds (unit), SEEDS seeds with real packets (root)
	NETPOL_DIFF_EXAMPLES=$(EXAMPLES) $(PY) -m pytest tests/unit/test_netpol_oracle_diff.py -q -p no:cacheprovider
	NETPOL_FUZZ_SEEDS=$(SEEDS) $(PY) -m pytest tests/privileged/test_netpol_oracle_packets.py -q -p no:cacheprovider

lint: setup ## ruff, mypy --strict on src/, the import layers (scripts/layers.py), markdownlint
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/mypy src
	$(PY) scripts/layers.py check
	$(MDLINT) $(MD_FILES)

arch-diagram: setup ## regenerate the package diagram in docs/architecture.md from the imports
	$(PY) scripts/layers.py doc

fmt: setup ## format the code with ruff
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

fmt-check: setup ## check formatting without changing files
	$(VENV)/bin/ruff format --check src tests bench

bench: setup ## run the benchmarks under bench/ (figures go into docs/benchmarks.md; netpol and routing need root)
	$(PY) bench/informer.py
	$(PY) bench/netpol.py
	$(PY) bench/proxy.py
	$(PY) bench/routing.py

demo: setup ## start a lab cluster on this machine (API server + nodes in netns + agents)
	$(PY) -m kube_router_lab.demo up

demo-down: setup ## tear down what `make demo` left behind
	$(PY) -m kube_router_lab.demo down

container: ## build the container image (needs a Docker engine)
	@if ! docker info >/dev/null 2>&1; then echo "container: no Docker engine reachable (docker info failed)" >&2; exit 1; fi
	docker build -t $(IMAGE) .

clean: ## remove the virtualenv, caches and build output
	rm -rf $(VENV) .tools .stamps .vm .mypy_cache .ruff_cache .pytest_cache .coverage coverage.xml build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
