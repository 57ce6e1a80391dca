# Two commands for a newcomer: `make demo` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 (CPU) lies on this machine's disk; look there first when it exists.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)
STAMP := $(VENV)/.installed

.PHONY: setup setup-browser demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(PIP_FLAGS) -r requirements-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	# An editable install leaves src/ uncompiled; where PYTHONDONTWRITEBYTECODE is set every
	# `trademl predict` would compile trademl from source again (~0.05 s of a cold start).
	$(BIN)/python -m compileall -q src >/dev/null
	touch $(STAMP)

demo: setup
	$(BIN)/trademl demo

# Debian's chromium renders the HTML reports in tests/test_report.py; without root the
# install is skipped and those tests say so.
setup-browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) || true

# Test files spread over the cores (pytest-xdist; at most 4 workers: each one loads torch), one
# file per worker so that a file's module fixtures are built once.
test: setup setup-browser
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m pip install -q --disable-pip-version-check $(PIP_FLAGS) -r bench/requirements.txt
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) artifacts logs .pytest_cache
