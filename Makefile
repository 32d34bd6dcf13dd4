# One-command set-up: `make demo` and `make test` create .venv (Python 3.12) and install pyroprune with
# its test extras, pinned by constraints.txt, before running.
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# Python 3.12: on PATH, else from pyenv.
PY312   ?= $(shell command -v python3.12 2>/dev/null || ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)

.PHONY: demo test test-all lint format notebooks clean install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PYTHON) || { test -n "$(PY312)" || { echo "error: Python 3.12 not found (install it, or set PY312=/path/to/python3.12)"; exit 1; }; $(PY312) -m venv $(VENV); }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 12), f"{sys.executable} is Python {sys.version.split()[0]}; need >= 3.12 (rm -rf $(VENV))"'
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[test,dev]"
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/pyroprune demo --out runs/demo --force

test: $(STAMP)
	$(PYTHON) -m pytest -q

test-all: $(STAMP)
	$(PYTHON) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check pyroprune models benchmarks tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format pyroprune models benchmarks tests

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
