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

# The main job: a 4-layer GPT learns the Python standard library's own source text (offline,
# CPU, a few minutes), evaluates, saves Orbax checkpoints in runs/demo, and prints a sample.
# Running it again resumes from the last checkpoint.
demo: install
	$(PY) train.py --config configs/gpt.py:demo --workdir runs/demo

lint: install
	$(VENV)/bin/ruff check .

.PHONY: install test demo lint
