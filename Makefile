# The project's commands. `make run-all` and `make test` do all the set-up they need.
#   make run-all [PROFILE=auto|smoke|cpu|gpu] [DATA=fashion-mnist|<folder>] [RUN=<name>] [FRESH=1] [JOBS=N] [VERBOSE=1]
#                [SET="name=value NB.name=value ..."]   (notebook parameters)
#   make run NB=01_baseline_cnn [PROFILE=…] [DATA=…] [RUN=…] [FRESH=1] [SET=…]
#   make audit DATA=<folder> [PROFILE=…] [RUN=…] [SET=…]   (00 and 10: duplicates, label errors)
#   make predict MODEL=<run>/<experiment> IMAGES=<folder> OUT=<file.csv> [TTA=1]
#   make export MODEL=<run>/<experiment> FORMAT=savedmodel|tflite|onnx [OUT=<folder>]
#   make prune-models RUN=<run> | KEEP=<N>   (free the models of old runs, keep their results)
#   make reproduce RUN=<run> [NB=<notebook>] [FORCE=1]   (rerun with its settings and compare)
#   make check (before each commit) · make test · make test-e2e · make lint · make setup-dev
#   make bench [SIZES=1000,10000] · make performance · make bench-gpu · make pictures RUN=<run>
#   make strip · make data · make weights · make setup · make clean

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
DEV_STAMP := $(VENV)/.setup-dev-done

PROFILE ?= auto
DATA    ?= fashion-mnist
RUN     ?=
NB      ?=
FRESH   ?=
JOBS    ?=
SET     ?=
# VERBOSE=1: every notebook's whole output on the terminal (it is always in reports/<run>/logs/)
VERBOSE ?=
# SET reaches the runner through the environment (make exports command-line variables), so
# its quotes survive: SET="augment=dihedral 01.epochs=80"
RUN_ARGS = --profile $(PROFILE) --data "$(DATA)" $(if $(RUN),--run "$(RUN)") $(if $(filter 1 true yes,$(FRESH)),--fresh) $(if $(SET),--set "$$SET") $(if $(filter 1 true yes,$(VERBOSE)),--verbose)

# Where `make test` runs the notebooks (smoke profile) and what it runs them on.
NBVAL_RUN_DIR ?= $(CURDIR)/reports/.nbval
NBVAL_DATA    ?= fashion-mnist
# pytest-xdist workers of the unit tests (make test, test-e2e, check)
TEST_WORKERS  ?= 2
# TensorFlow threads per test process: three processes share the two cores, and the tests'
# models are too small to gain from more
TEST_THREADS  ?= 1

.PHONY: setup setup-dev dev-tools check pictures test-notebooks test-units data weights run-all run audit reproduce predict export test test-e2e bench bench-gpu performance prune-models lint strip clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python 3.11 or newer is needed, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "from shared.run.kernel import ensure_kernel; print('jupyter kernel:', ensure_kernel())"
	touch $(STAMP)

# The contributor's tools (requirements-dev.txt) on top of the runtime; `make test` needs them.
dev-tools: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

# dev-tools, and the pre-commit hook (.pre-commit-config.yaml) installed into this clone.
setup-dev: dev-tools
	$(VENV)/bin/pre-commit install

# The dataset DATA, ready before any notebook starts (run-all, run and test depend on it).
# Fashion-MNIST, offline: from the Debian package dataset-fashion-mnist (installed here when
# apt is usable and the files are missing), from data/fashion-mnist/*.gz, or from Keras' download.
# A folder is checked file by file (the result is cached beside it). Stops with one message
# saying what to do when the dataset cannot be had.
data: setup
	@if [ "$(DATA)" = fashion-mnist ] \
	  && [ ! -f data/fashion-mnist/.complete ] \
	  && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
	  && [ ! -f data/fashion-mnist/train-images-idx3-ubyte.gz ] \
	  && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing the Debian package dataset-fashion-mnist"; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "apt-get could not install dataset-fashion-mnist; trying the other sources"; \
	fi
	$(PY) -m shared.data "$(DATA)"

# Run where there is network: puts the ImageNet weights the notebooks use into the Keras cache.
weights: setup
	$(PY) -m shared.models.backbones weights vgg19 inceptionv3

# JOBS=N: up to N notebooks at the same time, each on its own GPU where there are several.
run-all: data
	$(PY) -m shared.run.runner run-all $(RUN_ARGS) $(if $(JOBS),--jobs "$(JOBS)")

run: data
	@test -n "$(NB)" || (echo "usage: make run NB=<notebook> [PROFILE=…] [DATA=…] [RUN=…] [FRESH=1]"; exit 2)
	$(PY) -m shared.run.runner run --nb "$(NB)" $(RUN_ARGS)

# A finished run's notebooks again, with the settings it recorded, into
# reports/<run>-reproduced-<n>/, compared experiment by experiment (reproduction.json).
# What is wrong with a folder of images: notebooks 00 and 10 alone (near-duplicates, suspected
# label errors, and the baseline with and without them).
audit: data
	$(PY) -m shared.run.runner run --nb 00_data,10_data_quality $(RUN_ARGS)

reproduce: setup
	@test -n "$(RUN)" || (echo "usage: make reproduce RUN=<run> [NB=<notebook>] [FORCE=1]"; exit 2)
	$(PY) -m shared.run.reproduce --run "$(RUN)" $(if $(NB),--nb "$(NB)") $(if $(filter 1 true yes,$(FORCE)),--force)

predict: setup
	@test -n "$(MODEL)" -a -n "$(IMAGES)" -a -n "$(OUT)" || \
	  (echo "usage: make predict MODEL=<run>/<experiment> IMAGES=<folder> OUT=<file.csv> [TTA=1]"; exit 2)
	$(PY) -m shared.serve.predict --model "$(MODEL)" --images "$(IMAGES)" --out "$(OUT)" \
	  $(if $(filter-out 0,$(TTA)),--tta)

# A finished experiment's model for serving, checked against the Keras model (parity.json).
export: setup
	@test -n "$(MODEL)" -a -n "$(FORMAT)" || \
	  (echo "usage: make export MODEL=<run>/<experiment> FORMAT=savedmodel|tflite|onnx [OUT=<folder>]"; exit 2)
	$(PY) -m shared.serve.export --model "$(MODEL)" --format "$(FORMAT)" $(if $(OUT),--out "$(OUT)")

# Unit and integration tests in parallel (pytest-xdist, a test module per worker at a time),
# and beside them every notebook under nbval on the smoke profile, in order in one process, into
# one run directory (so 04_ensemble votes over what 01-03 wrote), followed in that process by the
# other tests that execute notebooks in kernels (KERNEL_TESTS: it balances the two parts' time on
# two cores). Each part's output is printed whole when it ends. The end-to-end tests (whole runs of every notebook in subprocesses, minutes
# each) are `make test-e2e`; CI runs both.
TEST_ENV = SHARED_PROFILE=smoke SHARED_RUN_DIR="$(NBVAL_RUN_DIR)" SHARED_DATA="$(NBVAL_DATA)" \
  TF_NUM_INTRAOP_THREADS=$(TEST_THREADS) TF_NUM_INTEROP_THREADS=$(TEST_THREADS) OMP_NUM_THREADS=$(TEST_THREADS)

test: data dev-tools
	rm -rf "$(NBVAL_RUN_DIR)"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-notebooks test-units

KERNEL_TESTS = tests/test_runner.py tests/test_reproduce.py

test-notebooks:
	$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider --nbval-lax --nbval-kernel-name image-classification \
	  --nbval-cell-timeout=600 -m "not end_to_end" $(PYTEST_ARGS) notebooks $(KERNEL_TESTS)

test-units:
	$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope \
	  -m "not end_to_end" $(addprefix --ignore=,$(KERNEL_TESTS)) $(PYTEST_ARGS) tests

test-e2e: data dev-tools
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope -m end_to_end \
	  $(PYTEST_ARGS) tests

# The README's pictures (docs/run-index.png, docs/report-figures.png) from a finished run of
# every notebook (a headless Chromium takes the index page: apt-get install chromium).
pictures: setup
	@test -n "$(RUN)" || (echo "usage: make pictures RUN=<run>"; exit 2)
	$(PY) docs/pictures.py "$(if $(filter /%,$(RUN)),$(RUN),reports/$(RUN))"

bench: setup
	$(PY) benchmarks/run_all.py $(if $(SIZES),--sizes $(SIZES))

# docs/performance.md again from the newest JSON of each benchmark in reports/bench (measures
# nothing; `make bench` measures and then writes the page too).
performance: setup
	$(PY) benchmarks/performance_page.py

# Training images/s of every backbone on the GPU (float32 vs mixed precision, XLA on vs off);
# without a GPU it says so and exits 0.
bench-gpu: setup
	$(PY) benchmarks/gpu.py

# Delete model.keras (and any checkpoints) of the finished experiments of run RUN, or of every
# run but the KEEP newest; metrics, predictions, figures and reports stay.
prune-models: setup
	@test -n "$(RUN)$(KEEP)" || (echo "usage: make prune-models RUN=<run> | KEEP=<N>"; exit 2)
	$(PY) -m shared.run.prune prune-models $(if $(RUN),--run "$(RUN)") $(if $(KEEP),--keep $(KEEP))

# ruff, and the layering of shared/ (the import-linter contracts in pyproject.toml).
lint: dev-tools
	$(PY) -m ruff check shared tests benchmarks notebooks docs
	$(VENV)/bin/lint-imports --no-cache

# The check before each commit (about a minute): lint, and the tests that start no kernel and
# train no model.
check: lint
	$(PY) -m pytest -p no:cacheprovider -q -n $(TEST_WORKERS) --dist loadscope -m "not end_to_end and not slow and not trains and not kernel" $(PYTEST_ARGS) tests

# Remove outputs and execution counts from the stored notebooks (nbstripout, as the hook does).
strip: dev-tools
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean:
	rm -rf reports/.nbval .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
