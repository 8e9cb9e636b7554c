# The two commands a newcomer needs: `make demo` and `make test`. Everything else is a piece of them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv/bin
PYTEST_FLAGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install uv (cached) and sync the locked Python environment into .venv
	@hack/bootstrap >/dev/null

.PHONY: testbin
testbin: ## build the control-plane, kwok, helm, OCI registry and helmfile binaries from Go modules (cached)
	@hack/testbin >/dev/null
	@bench/testbin >/dev/null

.PHONY: generate
generate: deps ## regenerate crds/ (and the chart's copy), schemas/ and docs/api.md from the models
	$(VENV)/helmfile-operator crds --output-dir crds
	$(VENV)/helmfile-operator crds --output-dir charts/helmfile-operator/crds
	$(VENV)/helmfile-operator docs --output docs/api.md
	$(VENV)/helmfile-operator schema --output-dir schemas

.PHONY: lint
lint: deps ## ruff lint and format check
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

.PHONY: fmt
fmt: deps ## apply ruff's fixes and formatting
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

.PHONY: typecheck
typecheck: deps ## mypy --strict on the package
	$(VENV)/mypy

.PHONY: unit
unit: deps ## unit tests (no cluster)
	$(VENV)/pytest tests/unit $(PYTEST_FLAGS)

.PHONY: integration
integration: deps testbin ## integration tests on the real control plane (started if none runs)
	$(VENV)/pytest tests/integration $(PYTEST_FLAGS)

.PHONY: test
test: lint typecheck unit integration ## everything CI checks

.PHONY: bench
bench: deps testbin ## benchmarks vs raw helm and helmfile (not in `test`; flags: BENCH_FLAGS="--sizes 10,1000")
	$(VENV)/python bench/run.py $(BENCH_FLAGS)

.PHONY: demo
demo: deps testbin ## start the local control plane and show it
	hack/demo

.PHONY: testbed-up testbed-down
testbed-up: deps testbin ## start the local control plane (idempotent)
	hack/testbed up
testbed-down: ## stop the local control plane
	hack/testbed down

.PHONY: clean
clean: ## remove local build state (not the binary cache)
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
