# vitedit-ops: `make demo` runs the nightly loop on embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-full setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitedit-ops demo

# Three pytest-xdist workers on two cores: the suite waits a good share of its time (servers
# starting, commands run in their own processes, polls), so a third worker fills the idle
# core. A module's tests stay on one worker (its module fixtures are built once), in the order
# tests/conftest.py gives (--no-loadscope-reorder: xdist would sort modules by test count and
# run the one-test benchmarks last). 805 tests took 11:55, 12:08 and 11:39 so on 2026-12-03
# (load ~3, the suite's own; 776 tests took 16 min 43 s with two workers and xdist's order): at
# the 12-minute goal, not under it; 816 took 10:19 on 2026-12-03's last host, and 816-817 took
# 15:26 and 15:01 on 2026-12-04's (quiet, a fresh clone). TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: $(STAMP)
	$(PY) -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow"

bench: $(STAMP)
	$(VENV)/bin/vitedit-ops bench --quick

bench-full: $(STAMP)
	$(VENV)/bin/vitedit-ops bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
