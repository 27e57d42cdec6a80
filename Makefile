# Two commands do all set-up on a fresh machine: `make bench` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
LEGS := compiled:asyncio compiled:uvloop pure:asyncio pure:uvloop

.PHONY: install demo docs test lint bench bench-suite clean

install: $(STAMP)

# Re-installs (and so rebuilds the engine) when the build inputs change.
$(STAMP): pyproject.toml setup.py dynapipeline/_engine/core_py.py dynapipeline/_engine/core_c.pxd
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) examples/readme_example.py

# The documentation site into site/ (gitignored). --strict turns every warning (a broken link or anchor, a page
# missing from the nav, a docstring mkdocstrings cannot read) into a failure; not with --quiet, which hides them
# from the count. `mkdocs serve` shows the site while editing.
DOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(VPY) -m mkdocs build --strict --site-dir site
docs: $(STAMP)
	$(DOCS_BUILD)

# Four legs (engine x loop); the first also builds the wheel and installs it in a fresh venv (tests/test_wheel.py).
test: $(STAMP)
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

lint: $(STAMP)
	$(VPY) -m ruff check dynapipeline tests examples benchmarks
	$(VPY) -m mypy --strict dynapipeline tests/typing

# The engine's cost per stage against raw asyncio, as one table (< 60 s; BENCH_ARGS=--quick: < 15 s).
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
