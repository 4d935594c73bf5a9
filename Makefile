# Two commands do all set-up on a fresh machine with Python >= 3.11:
#   make demo   create .venv if needed, install, run the demo recipe end to end
#   make test   create .venv if needed, install, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines pin the CPU build of torch; GPU users: make demo CONSTRAINTS=
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= all,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) 2>/dev/null | cksum | cut -d' ' -f1)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Prefect's on-demand server can take longer than its default 20 s to start on a busy 2-core machine
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: install tools browser demo test test-fast quality bench bench-memory bench-gpu reliability clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, from the constraint, so no dependency can pull a CUDA build
	$(if $(CONSTRAINTS),$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) torch)
	@echo "installing quantmill[$(EXTRAS)] (the first llama-cpp-python build takes ~11 min; pip caches it)"
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# llama.cpp's converter and tools, built once into ~/.cache/quantmill (a no-op afterwards)
tools: install
	$(BIN)/quantmill setup llama-cpp

# Debian's Chromium, for the test that opens report.html headless
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "could not install chromium: the HTML rendering test will be skipped"

# Exit code 3 means "a variant failed its gates": the demo's 2-bit RTN variant is meant to.
# Commands are not echoed: without a terminal the demo prints at most 60 lines (tests/flows/test_demo.py).
demo: tools
	@$(BIN)/quantmill validate recipes/
	@$(BIN)/quantmill plan recipes/demo.yaml
	@$(BIN)/quantmill run recipes/demo.yaml; status=$$?; \
	  if [ $$status -eq 3 ]; then echo "demo finished: rtn-w2-g64 failed its accuracy gate as designed; see runs/demo/*/report.html and ./zoo"; \
	  else exit $$status; fi

test: tools browser quality
	$(BIN)/python -m pytest

# Unit tests that need no model, no llama.cpp and no Prefect server (under a minute)
test-fast: install
	$(BIN)/python -m pytest -m fast -q -p no:cacheprovider

# The static gate: lint, formatting and types (CI runs it as part of `make test`)
quality: install
	$(BIN)/ruff check quantmill flows tasks tests bench
	$(BIN)/ruff format --check quantmill flows tasks tests bench
	$(BIN)/mypy quantmill flows tasks

# Ratios measured side by side (writes bench/results/summary.{json,md}); not part of the tests
bench: tools
	$(BIN)/python bench/run.py

# GPTQ's peak RAM against the fp16 size of a 312.9M-parameter model built from a config (~10 min on 2 cores)
bench-memory: install
	$(BIN)/python bench/memory.py

# On a GPU machine, one command: the CUDA build of torch (this venv's torch version), vLLM where it
# installs beside that torch (else its load check is skipped), then bench/gpu.py on one and two GPUs
bench-gpu:
	$(MAKE) install tools CONSTRAINTS=
	@torch_version=$$($(BIN)/python -c "import torch; print(torch.__version__.split('+')[0])"); \
	  $(BIN)/python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" || \
	  $(BIN)/python -m pip install --quiet --force-reinstall --no-deps --index-url https://pypi.org/simple "torch==$$torch_version"; \
	  $(BIN)/python -c "import vllm" 2>/dev/null || $(BIN)/python -m pip install --quiet vllm "torch==$$torch_version" || \
	  echo "vLLM does not install beside torch $$torch_version: bench/gpu.py will skip its load check"
	$(BIN)/python bench/gpu.py $(BENCH_GPU_ARGS)

# The large reliability runs: 10,000 fuzzed recipes, 20 kill -9 points, a token-leak scan
reliability: tools
	$(BIN)/python bench/reliability.py

clean:
	rm -rf $(VENV) runs zoo .pytest_cache
