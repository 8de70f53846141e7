# stepcall: `make demo` runs the product, `make test` passes the tests (both install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch on machines without a GPU (this file lies in the local wheel folder here).
TORCH_SPEC ?= torch==2.13.0
DEMO_CHECKPOINT ?= var/tiny-step-audio2

.PHONY: install system-deps demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[model,dev]"
	touch $@

install: $(VENV)/.installed

# Debian packages the caller simulator uses to speak (flite); skipped when present or without apt.
system-deps:
	@command -v flite >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq flite >/dev/null) || \
	  echo "warning: flite not installed (the caller simulator needs a TTS: flite or piper-tts)"; }

demo: install system-deps
	@bash scripts/demo.sh "$(BIN)" "$(DEMO_CHECKPOINT)"

test: install system-deps
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check bots pipeline model_service tests benchmarks

clean:
	rm -rf $(VENV) var .pytest_cache
