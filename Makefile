# edge-offload: `make demo` and `make test` set everything up from a fresh clone.
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
MODELS  := $(VENV)/.models
SYSDEPS := $(VENV)/.sysdeps
LOCK    := requirements.lock
TESTLOCK := requirements-test.lock
SECONDS ?= 20
PYTEST_ARGS ?=

.PHONY: setup demo test lint faults bench clean lock

setup: $(STAMP) $(MODELS)

# System packages: a real Mosquitto broker, espeak-ng + sox for synthetic speech, headless Chromium and
# its WebDriver for the console's browser test.
$(SYSDEPS):
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	command -v mosquitto_passwd >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	command -v sox       >/dev/null 2>&1 || missing="$$missing sox"; \
	command -v chromium  >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

# torch alone first (the CPU wheel), then every other dependency exactly as locked, each file
# checked against its sha256, then the project itself without dependencies.
$(STAMP): pyproject.toml $(TESTLOCK) $(SYSDEPS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --require-hashes -r $(TESTLOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

# After a dependency change in pyproject.toml: update both lock files (pip-tools, in a venv of
# its own), keeping the other pins; `make lock UPGRADE=--upgrade` moves every pin to the newest
# allowed. torch is left out of them: it is installed on its own, above and in the image.
UPGRADE ?=
LOCKVENV := .venv-lock
PIPCOMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCKVENV)/bin/pip-compile --quiet --generate-hashes \
	--strip-extras --no-emit-index-url --no-emit-find-links --unsafe-package torch
lock:
	@test -x $(LOCKVENV)/bin/pip-compile || ($(PYTHON) -m venv $(LOCKVENV) && \
	  $(LOCKVENV)/bin/pip install -q pip-tools==7.6.2)
	$(PIPCOMPILE) $(UPGRADE) --output-file $(LOCK) pyproject.toml
	$(PIPCOMPILE) $(UPGRADE) --extra test -c $(LOCK) --output-file $(TESTLOCK) pyproject.toml

$(MODELS): $(STAMP) models/artifacts.py
	$(BIN)/edge-offload fetch-models
	@touch $@

demo: setup
	$(BIN)/edge-offload demo --seconds $(SECONDS)

test: setup lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff and mypy, both configured in pyproject.toml; `make test` runs them first.
lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

# Every fault-injection test (tests/faults), the long ones too: broker stall, restarts,
# agent kill -9, QoS 0 flood, 100 speech legs. `make test` runs only the fast ones.
faults: setup
	$(BIN)/python -m pytest -q -m "" -s tests/faults $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench.vision --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
