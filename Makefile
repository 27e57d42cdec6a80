# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
LEGS := compiled:asyncio compiled:uvloop pure:asyncio pure:uvloop

.PHONY: install demo test lint bench bench-suite clean

install: $(STAMP)

# Re-installs (and so rebuilds the engine) when the build inputs change.
$(STAMP): pyproject.toml setup.py dynapipeline/engine/core_py.py dynapipeline/engine/core_c.pxd
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) examples/readme_example.py

test: $(STAMP)
	$(VPY) -m ruff check dynapipeline tests examples benchmarks
	@set -e; for leg in $(LEGS); do \
		mode=$${leg%%:*}; loop=$${leg##*:}; \
		echo "=== engine=$$mode loop=$$loop"; \
		if [ $$mode = pure ]; then noext=1; else noext=; fi; \
		DYNAPIPELINE_TEST_MODE=$$mode DYNAPIPELINE_NO_EXTENSIONS=$$noext DYNAPIPELINE_LOOP=$$loop \
			$(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests; \
	done
	$(VPY) -m pytest -q -p no:cacheprovider benchmarks --benchmark-disable

lint: $(STAMP)
	$(VPY) -m ruff check dynapipeline tests examples benchmarks
	$(VPY) -m mypy dynapipeline

clean:
	rm -rf build *.egg-info dynapipeline/engine/*.c dynapipeline/engine/*.so .pytest_cache
