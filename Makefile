# bcdr — everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BCDR   := $(VENV)/bin/bcdr
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install run test bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	touch $@

# Demo: make a small tree, back it up to a local repository, restore it, compare, check.
run: install
	$(PY) -m bcdr.demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) bench/run.py

lint: install
	$(VENV)/bin/ruff check bcdr tests bench
	$(VENV)/bin/mypy bcdr

clean:
	rm -rf $(VENV) demo .bcdr bench/out
