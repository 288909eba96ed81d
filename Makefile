# Every target builds its own virtual environment first: a fresh machine needs nothing but python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv test demo lint format clean

help:
	@echo "make demo   emulator + gateway in one process, a few invocations, a table (no AWS account)"
	@echo "make test   the whole test suite against real sockets, boto3 and the AWS CLI"
	@echo "make lint   ruff check and ruff format --check"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/sagemaker-gateway demo

lint: $(STAMP)
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests

format: $(STAMP)
	$(BIN)/ruff format gateway tests
	$(BIN)/ruff check --fix gateway tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
