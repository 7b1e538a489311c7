# The two commands of the course (see README.md). Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv fetches and unpacks in parallel and keeps a cache for the next .venv. On a slow, shared
# 2-core machine pip took 22 min for PyTorch and 21 min for the rest; uv 13 min and 1.5 min.
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on CI), every process would
# otherwise compile torch's modules again at import.
UV := $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python
SAT_PROFILE ?= shapes
export PYTHONHASHSEED := 0

TORCH := torch==2.14.1 torchvision==0.29.1
# The lower-bound environment: the package's runtime dependencies at the lowest versions
# pyproject.toml allows (uv's lowest-direct), the test tools at their newest.
LOWEST := .venv-lowest
UV_LOWEST := $(LOWEST)/bin/uv pip install -q --compile-bytecode --python $(LOWEST)/bin/python
QUICK := SAT_PROFILE=quick OMP_NUM_THREADS=1
PYTEST := -m pytest -q tests notebooks --nbval-lax -p no:cacheprovider

.PHONY: course test lab lint bench bench-tables student clean
.PHONY: test-lowest test-browser book test-book

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(UV) $(TORCH) -e ".[dev,coco,teach]"
	touch $(STAMP)

$(LOWEST)/.installed: pyproject.toml  # anew: uv would keep a version above a lowered bound
	rm -rf $(LOWEST) && $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q --disable-pip-version-check uv
	$(UV_LOWEST) --resolution lowest-direct $(TORCH) -e ".[coco]"
	$(UV_LOWEST) -e ".[dev,coco,teach]"
	touch $@

course: $(STAMP)  ## run the whole series on the Shapes data, offline
	SAT_PROFILE=$(SAT_PROFILE) $(BIN)/sat course --out build

# The book shows what `make course` ran: it runs the course only when an executed notebook or
# the results are missing or older than a notebook, and never executes a notebook itself.
NOTEBOOKS := $(wildcard notebooks/[0-9][0-9]_*.ipynb)
EXECUTED := $(NOTEBOOKS:notebooks/%=build/notebooks/%) build/course-results.json
$(EXECUTED) &: $(NOTEBOOKS)
	$(MAKE) course

$(VENV)/.book: $(STAMP)
	$(UV) -e ".[book]"
	touch $@

book: $(VENV)/.book $(EXECUTED)  ## the executed notebooks as a static website in build/book/
	$(BIN)/python -m book.build --executed build --out build/book

# One thread per process: the tests and notebook kernels are tiny, and on a shared 2-core
# machine OpenMP's spinning threads made them several times slower.
test: $(STAMP)  ## pytest + nbval of every notebook on the quick profile
	$(QUICK) $(BIN)/python $(PYTEST) --durations=30

test-lowest: $(LOWEST)/.installed  ## the same tests with every dependency at its lower bound
	$(QUICK) SAT_LOWEST=1 $(LOWEST)/bin/python $(PYTEST)

# Needs Debian's chromium and chromium-driver (installed here when missing; apt-get needs root).
CHROMIUM := command -v chromedriver > /dev/null || \
	(apt-get update -qq && apt-get install -y -qq chromium chromium-driver > /dev/null)
test-browser: $(STAMP)  ## notebook 05's explorer driven in JupyterLab in headless Chromium
	$(CHROMIUM)
	test -f $(VENV)/.browser || ($(UV) -e ".[lab]" "selenium>=4.10" && touch $(VENV)/.browser)
	$(QUICK) SAT_BROWSER=1 $(BIN)/python -m pytest -q tests/test_browser.py -p no:cacheprovider

# The book of a `quick` run (build/quick/), every page opened in headless Chromium.
test-book: $(VENV)/.book  ## make book's site checked in headless Chromium (images, math, links)
	$(CHROMIUM)
	test -f $(VENV)/.browser || ($(UV) -e ".[lab]" "selenium>=4.10" && touch $(VENV)/.browser)
	$(QUICK) $(BIN)/sat course --out build/quick
	$(QUICK) SAT_BROWSER=1 $(BIN)/python -m pytest -q tests/test_book.py tests/test_book_browser.py \
		-p no:cacheprovider

lab: $(STAMP)  ## open the notebooks in JupyterLab (adds the lab extra to .venv once)
	test -f $(VENV)/.lab || ($(UV) -e ".[lab]" && touch $(VENV)/.lab)
	$(BIN)/jupyter lab notebooks

lint: $(STAMP)  ## ruff, module and function sizes, and the notebook checks
	$(BIN)/ruff check .
	$(BIN)/python tests/check_sizes.py
	$(BIN)/python -m pytest -q tests/test_notebooks.py

student: $(STAMP)  ## student/: notebooks/ with the exercises' solutions cleared (nbgrader)
	$(BIN)/python -m sat_helpers.editions

# Before merging a change to the decoder, training or search (docs/development.md): the
# training step's and beam search's speed-ups against BASE, side by side in one run; exits 1
# when one fell by more than the noise it measured. BASE: a commit, tag or branch (default:
# the last v* tag, else origin/main, else main), e.g. `make bench BASE=0119d65`.
bench: $(STAMP)  ## speed of the working tree against BASE; fails on a regression
	$(BIN)/python benchmarks/compare.py $(if $(BASE),--base $(BASE))

bench-tables: $(STAMP)  ## rerun every benchmarks/bench_*.py, rewriting benchmarks/results/
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build

# On a Linux machine with an NVIDIA GPU: pytest, every notebook (quick), torchrun under NCCL and
# a resume, benchmarks/bench_gpu.py (tests/gpu_check.sh; README "GPU check"). With
# PYTHON=/path/to/python it runs with that interpreter and installs nothing (offline machines).
GPU_CHECK_PY := $(if $(filter command line,$(origin PYTHON)),$(PYTHON),$(BIN)/python)
.PHONY: gpu-check
gpu-check: $(if $(filter command line,$(origin PYTHON)),,$(STAMP))
	bash tests/gpu_check.sh $(GPU_CHECK_PY)
