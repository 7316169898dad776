# gpulane: every target builds its own virtual environment first, so `make run`
# and `make test` are all a newcomer needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUFF_RULES := --line-length 100 --select E,F,W,I,B,UP,SIM,RUF --ignore RUF009,SIM105 --target-version py311

.PHONY: install run test bench lint format clean

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

bench: $(STAMP)
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
