# Both commands set up everything they need on a fresh machine: a venv in .venv and the project in it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROMTOOL := $(VENV)/bin/promtool
FAKETIME := $(VENV)/lib/libfaketime.so.1

.PHONY: demo test test-fast bench lint lock clean browser

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

# libfaketime shifts the clock of a worker or beat process in tests/integration/test_clock.py (LD_PRELOAD):
# the system's when installed, else unpacked from Debian's package; without apt those tests are skipped.
$(FAKETIME): | $(STAMP)
	@lib=$$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -1); \
	if [ -n "$$lib" ]; then ln -sf "$$lib" $@; \
	elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then \
	  tmp=$$(mktemp -d); \
	  (cd $$tmp && apt-get download libfaketime >/dev/null 2>&1 && dpkg-deb -x libfaketime_*.deb x \
	   && cp x/usr/lib/*/faketime/libfaketime.so.1 $(CURDIR)/$@ && echo "libfaketime: from Debian's package") \
	  || echo "libfaketime: could not be fetched with apt; the skewed-clock tests are skipped"; \
	  rm -rf $$tmp; \
	else echo "libfaketime: no apt here; the skewed-clock tests are skipped"; fi

# The console's browser tests drive Debian's chromium (Playwright's own browser download does not work
# here). Installed with apt when it is missing and this runs as root; otherwise those tests skip (CI sets
# REQUIRE_BROWSER=1, which turns the skip into a failure).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  && echo "chromium: installed from Debian for the console's browser tests" \
	  || echo "chromium: could not be installed with apt; the console's browser tests skip"; \
	else echo "chromium: not installed (apt-get install chromium); the console's browser tests skip"; fi

# lint first: a lint finding fails the tests as a failing test would
test: $(STAMP) lint $(PROMTOOL) $(FAKETIME) browser
	$(PY) -m pytest -n 2 --dist worksteal

test-fast: $(STAMP) $(PROMTOOL) $(FAKETIME) browser
	$(PY) -m pytest -n 2 --dist worksteal -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

# The image's pinned dependencies (Dockerfile): after any change to pyproject's dependencies, then
# commit requirements.lock. tests/repo/test_image.py fails while the two disagree.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml requirements-build.in --universal --python-version 3.11 \
		--generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
