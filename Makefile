# Two commands on a fresh machine: `make up` runs the platform, `make test` runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install up test test-fast test-slow lint bench grpc

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

up: install
	$(VENV)/bin/maas up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-fast: install
	$(PY) -m pytest -m "not slow"

test-slow: install
	$(PY) -m pytest -m slow

test: lint test-fast test-slow

# regenerate the OIP gRPC modules from api/oip_grpc/open_inference_grpc.proto (they are committed)
grpc: install
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. api/oip_grpc/open_inference_grpc.proto
