# The two commands of the course (see README.md). Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAT_PROFILE ?= shapes
export PYTHONHASHSEED := 0

.PHONY: course test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev,coco]"
	touch $(STAMP)

course: $(STAMP)  ## run the whole series on the Shapes data, offline
	SAT_PROFILE=$(SAT_PROFILE) $(BIN)/sat course --out build

# Two processes at once: pytest on tests/ in the background (its report follows at the end,
# from build/test-tests.log) and nbval on the notebooks, in order (05-07 reuse the model 04
# trains). One thread each: the tests and notebook kernels are tiny, and on a shared 2-core
# machine OpenMP's spinning threads made them several times slower.
TEST_ENV := SAT_PROFILE=quick OMP_NUM_THREADS=1
test: $(STAMP)  ## pytest + nbval of every notebook on the quick profile
	mkdir -p build
	$(TEST_ENV) $(BIN)/python -m pytest -q tests -p no:cacheprovider --durations=15 \
		> build/test-tests.log 2>&1 & tests=$$!; \
	$(TEST_ENV) $(BIN)/python -m pytest -q notebooks --nbval-lax -p no:cacheprovider \
		--durations=15; notebooks=$$?; \
	wait $$tests; status=$$?; echo "---- pytest tests/ (build/test-tests.log)"; \
	cat build/test-tests.log; test $$notebooks -eq 0 && test $$status -eq 0

lint: $(STAMP)  ## ruff and the notebook checks
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests/test_notebooks.py

bench: $(STAMP)  ## the benchmarks/ tables
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build
