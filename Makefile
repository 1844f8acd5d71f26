# fedchest: `make demo`, `make test`, `make bench` do their own set-up (.venv) on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedchest-installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
DEMO_OUT ?= demo-out

.PHONY: venv demo lint test test-fast test-e2e bench lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedchest demo --out $(DEMO_OUT) --zeroshot --box-latent --ct-sites 1

# The whole suite, end-to-end tests included, on two pytest-xdist workers (budget: 20 min on 2 cores; one run
# measured 17 min with other jobs on the machine, against 31 min for the two halves one after the other). Much of an
# end-to-end test is waiting (polls, deadlines, process start-up), which the other worker fills. A test file runs
# on one worker (--dist loadfile), so its module fixtures are made once.
# pytest exits 5 when no test ran; make treats any non-zero exit as failure.
TEST_WORKERS ?= 2
# ruff first ([tool.ruff] in pyproject.toml): a lint error fails `make test` before any test runs.
lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	@sh scripts/ensure_system_packages.sh
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" --durations=15

test-e2e: $(STAMP)
	@sh scripts/ensure_system_packages.sh
	$(PY) -m pytest -q -m e2e --durations=15

bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# deploy/requirements.lock: the exact versions this venv was tested with, for the container images (CPU torch:
# CUDA / NVIDIA / Triton wheels and test-only packages left out).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(fedchest|pytest|selenium|pyflakes|ruff|iniconfig|pluggy|trio|trio-websocket|wsproto|outcome|sortedcontainers|pysocks|websocket-client|nvidia-.*|cuda-.*|triton)==' > deploy/requirements.lock

clean:
	rm -rf $(DEMO_OUT) .pytest_cache bench-out
