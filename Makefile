# Two commands do all set-up on a fresh machine: `make bench` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COPY_C := dynapipeline/_transports/_remote/copy_c.pyx dynapipeline/_transports/process/itemlog_c.pyx
PYTEST_ARGS ?=
LEGS := compiled:asyncio compiled:uvloop pure:asyncio pure:uvloop
# The other Pythons `make test` runs one leg on (compiled engine, asyncio loop), each in its own .venv-X.Y.
EXTRA_PYTHONS := 3.12 3.13
# Their interpreters: PYTHON312=/path/to/python3.12 overrides. Found otherwise as python3.12 on PATH when it runs
# (a pyenv shim for a version that is not selected exists but fails), else the newest $(PYENV_ROOT)/versions/3.12.*.
PYENV_ROOT ?= $(HOME)/.pyenv
find_python = $(firstword $(foreach c,$(shell command -v python$(1)) \
	$(shell ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -V | tail -n 1), \
	$(if $(shell $(c) -c 'print(1)' 2>/dev/null),$(c))))
PYTHON312 ?= $(call find_python,3.12)
PYTHON313 ?= $(call find_python,3.13)

.PHONY: install demo docs test test-pythons lint bench bench-suite clean

install: $(STAMP)

# Re-installs (and so rebuilds the engine) when the build inputs change.
$(STAMP): pyproject.toml setup.py dynapipeline/_engine/core_py.py dynapipeline/_engine/core_c.pxd $(COPY_C)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Same rebuild rule as .venv; a missing interpreter fails here with what to set, it is never skipped.
.venv-%/.installed: pyproject.toml setup.py dynapipeline/_engine/core_py.py dynapipeline/_engine/core_c.pxd $(COPY_C)
	@py='$(PYTHON$(subst .,,$*))'; \
	if [ -z "$$py" ]; then \
		echo "make: no Python $* found (python$* on PATH, $(PYENV_ROOT)/versions/$*.*);" \
			"install it or set PYTHON$(subst .,,$*)=/path/to/python$*" >&2; exit 1; fi; \
	if ! "$$py" -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$*".split("."))))'; then \
		echo "make: PYTHON$(subst .,,$*)=$$py is not Python $*" >&2; exit 1; fi
	test -x .venv-$*/bin/python || $(PYTHON$(subst .,,$*)) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VPY) examples/readme_example.py

# The documentation site into site/ (gitignored). --strict turns every warning (a broken link or anchor, a page
# missing from the nav, a docstring mkdocstrings cannot read) into a failure; not with --quiet, which hides them
# from the count. `mkdocs serve` shows the site while editing.
DOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(VPY) -m mkdocs build --strict --site-dir site
docs: $(STAMP)
	$(DOCS_BUILD)

# Four legs (engine x loop); the first also builds the wheel and installs it in a fresh venv (tests/test_wheel.py).
test: $(STAMP) $(EXTRA_PYTHONS:%=.venv-%/.installed)
	$(VPY) -m ruff check dynapipeline tests examples benchmarks
	$(VPY) -m mypy --strict dynapipeline tests/typing
	$(DOCS_BUILD)
	@set -e; for leg in $(LEGS); do \
		mode=$${leg%%:*}; loop=$${leg##*:}; \
		echo "=== engine=$$mode loop=$$loop"; \
		if [ $$mode = pure ]; then noext=1; else noext=; fi; \
		if [ $$leg = compiled:asyncio ]; then wheel=1; else wheel=; fi; \
		DYNAPIPELINE_TEST_MODE=$$mode DYNAPIPELINE_NO_EXTENSIONS=$$noext DYNAPIPELINE_LOOP=$$loop \
			DYNAPIPELINE_TEST_WHEEL=$$wheel $(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests; \
	done
	$(VPY) -m pytest -q -p no:cacheprovider benchmarks --benchmark-disable
	$(MAKE) --no-print-directory test-pythons

# One leg (compiled engine, asyncio loop) of the suite on each of EXTRA_PYTHONS.
test-pythons: $(EXTRA_PYTHONS:%=.venv-%/.installed)
	@set -e; for version in $(EXTRA_PYTHONS); do \
		echo "=== python=$$version engine=compiled loop=asyncio"; \
		DYNAPIPELINE_TEST_MODE=compiled DYNAPIPELINE_NO_EXTENSIONS= DYNAPIPELINE_LOOP=asyncio DYNAPIPELINE_TEST_WHEEL= \
			.venv-$$version/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests; \
	done

lint: $(STAMP)
	$(VPY) -m ruff check dynapipeline tests examples benchmarks
	$(VPY) -m mypy --strict dynapipeline tests/typing

# The engine's cost per stage against raw asyncio, as one table, then MB/s of large items on 2 processes beside
# one process and the peers (< 60 s; BENCH_ARGS=--quick: < 15 s).
BENCH_ARGS ?=
bench: $(STAMP)
	$(VPY) -m dynapipeline bench $(BENCH_ARGS)

# pytest-benchmark suite, compiled then pure. BENCH_JSON=name writes name-compiled.json and name-pure.json.
BENCH_JSON ?=
BENCH_SUITE_ARGS ?= --benchmark-max-time=0.5 --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds
bench-suite: $(STAMP)
	@set -e; for mode in compiled pure; do \
		echo "=== engine=$$mode"; \
		if [ $$mode = pure ]; then noext=1; else noext=; fi; \
		json=; if [ -n "$(BENCH_JSON)" ]; then json="--benchmark-json=$(BENCH_JSON)-$$mode.json"; fi; \
		DYNAPIPELINE_NO_EXTENSIONS=$$noext $(VPY) -m pytest -q -p no:cacheprovider benchmarks \
			--benchmark-only $(BENCH_SUITE_ARGS) $$json; \
	done

clean:
	rm -rf build dist site *.egg-info dynapipeline/_engine/*.c dynapipeline/_engine/*.so .pytest_cache
