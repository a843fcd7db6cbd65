# agentrun: `make test` runs everything CI runs; `make demo` shows the product working.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv controlplane node-prereqs test unit integration chart node cluster lint crds chart-docs demo bench clean

help:
	@echo "make test    lint + unit + integration + chart + node tiers (what CI runs)"
	@echo "make node    the node tier: a real node runs the chart's Deployment (root; one node per machine)"
	@echo "make cluster keep a cluster with a real node up, for trying the chart by hand"
	@echo "make demo    throwaway control plane + operator + examples/; as root, a node and a pod-mode run (DEMO_ARGS=--keep)"
	@echo "make crds    regenerate crds/ from the API models"
	@echo "make lint    ruff, mypy --strict, import-linter, CRD drift"
	@echo "make bench   benchmarks against the local control plane, JSON under bench/results/"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# Builds the pinned Kubernetes binaries, etcd, helm and containerd once; later runs reuse the cache.
controlplane:
	@bash hack/controlplane/build.sh >/dev/null

# The node's Debian packages (apt-get, as root), its binaries, the pause, Python base and
# operator images (from the Dockerfile); cached outside the tree, each step timed.
node-prereqs: venv controlplane
	$(BIN)/python hack/localcluster.py prepare-node

lint: venv
	$(BIN)/ruff check operator tests hack bench
	$(BIN)/ruff format --check operator tests hack bench
	$(BIN)/mypy
	MYPYPATH=hack:tests:tests/node $(BIN)/mypy --strict --follow-imports=silent hack/localnode hack/localcluster.py tests/node
	MYPYPATH=hack:bench $(BIN)/mypy --strict --follow-imports=silent bench hack/demo.py
	$(BIN)/lint-imports
	$(BIN)/agentrun crd --check crds
	$(BIN)/agentrun crd --check charts/agentrun-operator/files

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: venv controlplane
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

chart: venv controlplane
	$(BIN)/python -m pytest tests/chart $(PYTEST_ARGS)

node: venv node-prereqs
	$(BIN)/python -m pytest tests/node $(PYTEST_ARGS)

# Prints the export KUBECONFIG=... line and a helm install command; Ctrl-C tears it all down.
cluster: venv node-prereqs
	$(BIN)/python hack/localcluster.py up --node

test: venv controlplane node-prereqs lint
	$(BIN)/python -m pytest -ra tests $(PYTEST_ARGS)

# The chart ships the same generated files; a chart test fails if the copies differ.
crds: venv
	$(BIN)/agentrun crd --output crds
	$(BIN)/agentrun crd --output charts/agentrun-operator/files

# The chart README's configuration table is generated from values.yaml; a chart test checks it.
chart-docs: venv
	$(BIN)/python tests/chart/values_doc.py --write

demo: venv controlplane
	$(BIN)/python hack/demo.py $(DEMO_ARGS)

bench: venv controlplane
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
