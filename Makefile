# Both commands set up everything they need on a fresh machine: a venv in .venv and the project in it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast bench lint lock clean

$(STAMP): pyproject.toml $(wildcard */__init__.py)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stockout-sync demo

# lint first: a lint finding fails the tests as a failing test would
test: $(STAMP) lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

# The image's pinned dependencies (Dockerfile): after any change to pyproject's dependencies, then
# commit requirements.lock. tests/unit/test_image.py fails while the two disagree.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml requirements-build.in --universal --python-version 3.11 \
		--generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
