# bcdr — everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BCDR   := $(VENV)/bin/bcdr
PIP    := $(PY) -m pip --disable-pip-version-check -q
NPM    ?= npm

.PHONY: install node browser restic run test bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	touch $@

# Node tools for the tests (Azurite, the Azure Storage emulator); `make run` does not need them.
node: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	@command -v $(NPM) >/dev/null || { echo "make test needs Node.js and npm (for Azurite): apt-get install -y nodejs npm" >&2; exit 1; }
	$(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium, for the test that renders the HTML compliance report headless.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (the HTML report test renders in it)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || { \
	    echo "make test needs Chromium: apt-get install -y chromium" >&2; exit 1; }; }

# Debian's restic, the baseline `make bench` measures bcdr against.
restic:
	@command -v restic >/dev/null 2>&1 || { \
	  echo "installing Debian's restic (the baseline of make bench)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null || { \
	    echo "make bench compares with restic: apt-get install -y restic" >&2; exit 1; }; }

# Demo: make a small tree, back it up to a local repository, restore it, compare, check.
run: install
	$(PY) -m bcdr.demo

test: install node browser
	$(PY) -m pytest -q -p no:cacheprovider

bench: install node restic
	$(PY) bench/run.py

lint: install
	$(VENV)/bin/ruff check bcdr tests bench
	$(VENV)/bin/mypy bcdr

clean:
	rm -rf $(VENV) node_modules demo .bcdr bench/out
