# One-command set-up on a fresh machine: `make test` (the suite) and `make demo` (the main job).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKERS ?= 2

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# pytest exits 5 when it collects no test: that is a failure here, like any other non-zero.
test: install
	$(PY) -m pytest -n $(WORKERS) -q

lint: install
	$(VENV)/bin/ruff check .

.PHONY: install test lint
