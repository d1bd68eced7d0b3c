# Both commands set up everything they need on a fresh machine: a venv in .venv and the project in it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROMTOOL := $(VENV)/bin/promtool

.PHONY: demo test test-fast bench lint lock clean

$(STAMP): pyproject.toml $(wildcard */__init__.py)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)  # KEEP=1: leave its state to try the next commands on (demo --keep)
	$(VENV)/bin/stockout-sync demo $(if $(KEEP),--keep)

# promtool checks and unit-tests deploy/prometheus-rules.yml. Taken from Debian's `prometheus` package,
# unpacked rather than installed (installing it would also set up a Prometheus server). Where apt is not
# available the step says so and the rules get the schema-level test only.
$(PROMTOOL): | $(STAMP)
	@if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; \
	elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then \
	  tmp=$$(mktemp -d); \
	  (cd $$tmp && apt-get download prometheus >/dev/null 2>&1 && dpkg-deb -x prometheus_*.deb x \
	   && cp x/usr/bin/promtool $(CURDIR)/$@ && echo "promtool: from Debian's prometheus package") \
	  || echo "promtool: could not be fetched with apt; the rules get the schema-level test only"; \
	  rm -rf $$tmp; \
	else echo "promtool: no apt here; the rules get the schema-level test only"; fi

# lint first: a lint finding fails the tests as a failing test would
test: $(STAMP) lint $(PROMTOOL)
	$(PY) -m pytest -n 2 --dist worksteal

test-fast: $(STAMP) $(PROMTOOL)
	$(PY) -m pytest -n 2 --dist worksteal -m "not slow"

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
