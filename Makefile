# Two entry points: `make run` installs vistream and analyses the sample clip; `make test` runs
# every test against real Kafka, RTSP and ONNX parts, installing and starting them first.
# Recipes are silent and report on stderr, so `make run` prints only results on stdout.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install install-test run test clean

$(BIN)/python:
	@echo "make: creating $(VENV)" >&2
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip >&2

# The stamps make a second `make run` skip pip until pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "make: installing vistream into $(VENV)" >&2
	@$(BIN)/pip install --quiet -e . >&2
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@echo "make: installing vistream and its test dependencies into $(VENV)" >&2
	@$(BIN)/pip install --quiet -e '.[test]' >&2
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	@$(BIN)/vistream run $(ARGS)

test: install-test
	@bash scripts/test.sh $(ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache
