# Two entry points: `make run` installs vistream and analyses the sample clip; `make test` runs
# every test against real Kafka, RTSP and ONNX parts, installing and starting them first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install install-test run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

run: install
	$(BIN)/vistream run $(ARGS)

test: install-test
	bash scripts/test.sh $(ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache
