# Two commands a person needs: `make demo` and `make test`.  Each sets itself up.
PY ?= python3
.DEFAULT_GOAL := demo
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup demo test lint typecheck bench mutation screenshots models clean thirdparty-wheels

$(STAMP): pyproject.toml
	./.ci/setup-system
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(MAKE) thirdparty-wheels
	touch $(STAMP)

# Third-party models that PyPI packages ship inside their wheels, for the packer's tests
# (only the wheel is fetched, none of its dependencies; a test without it is skipped).
thirdparty-wheels:
	mkdir -p .cache/wheels
	ls .cache/wheels/silero_vad-*.whl >/dev/null 2>&1 || \
	  $(BIN)/pip download -q --no-deps silero-vad==6.2.3 -d .cache/wheels || \
	  echo "silero-vad wheel not fetched: its packer test will be skipped"

setup: $(STAMP)

demo: $(STAMP)
	FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 $(BIN)/fleet-server demo --data-dir var/demo

# The suite runs under coverage (its subprocesses too, see [tool.coverage.run]); the packages'
# branch coverage is printed after it, whatever the tests' outcome, and is not a gate.
test: $(STAMP)
	rm -rf .cache/coverage && mkdir -p .cache/coverage
	FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
	  $(BIN)/coverage run -m pytest $(PYTEST_ARGS); status=$$?; \
	  $(BIN)/python -m bench.bench_coverage || true; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check agent fleet_server edgefleet_contract edgefleet_common edgefleet_sim edgefleet_demo models tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# Mutation testing of the core modules (long; not part of CI): docs/benchmarks.md's row and
# docs/mutation-survivors.md.  mutmut comes from the `mutation` extra, outside `dev`.
mutation: $(STAMP)
	$(BIN)/pip install -q -e '.[mutation]'
	$(BIN)/python -m bench bench_mutation

screenshots: $(STAMP)
	SCREENSHOTS_DIR=docs/screenshots FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_console_browser_*.py tests/test_console_rollouts.py

models: $(STAMP)
	$(BIN)/python -m models.build

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
