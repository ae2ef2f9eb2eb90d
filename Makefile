# bcdr — everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BCDR   := $(VENV)/bin/bcdr
PIP    := $(PY) -m pip --disable-pip-version-check -q
NPM    ?= npm

.PHONY: install node browser restic rclone systemd slurm prometheus fuse disktools run test bench bench-quick lint clean

# Bytecode is compiled as a wheel install would (with PYTHONDONTWRITEBYTECODE set, an editable
# install would otherwise compile every module on every run: ~0.1 s per command).
install: $(VENV)/.installed
	@$(PY) -m compileall -q bcdr

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

# $(call apt-install,COMMAND,PACKAGE,WHAT FOR): install a Debian package when COMMAND is missing.
define apt-install
	@command -v $(1) >/dev/null 2>&1 || { \
	  echo "installing Debian's $(2) ($(3))"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null || { \
	    echo "$(3) needs it: apt-get install -y $(2)" >&2; exit 1; }; }
endef

# Debian's Chromium, for the test that renders the HTML compliance report headless.
browser:
	$(call apt-install,chromium,chromium,the HTML report test)

# Debian's systemd, for systemd-analyze verify of the units `schedule install` writes.
systemd:
	$(call apt-install,systemd-analyze,systemd,the unit-file tests)

# Debian's Slurm and munge, for the tests that run sharded backups through a real single-node
# cluster (tests/slurm_cluster.py starts and stops it; no Debian service is started).
slurm:
	$(call apt-install,slurmctld,slurm-wlm,the Slurm tests)
	$(call apt-install,munged,munge,the Slurm tests)

# Debian's Prometheus, for promtool: the tests check the metrics textfile, the alert rules and
# their unit tests with it, and the dashboard preview backfills a real Prometheus. Installed
# without its recommends (node_exporter and its timers), and without starting its service
# (a policy-rc.d that refuses, where none is in place): the tests start their own, on loopback.
prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus (promtool, for the monitoring tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  POLICY=/usr/sbin/policy-rc.d; OURS=; \
	  if [ ! -e $$POLICY ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$POLICY >/dev/null && $$SUDO chmod 755 $$POLICY && OURS=1; \
	  fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus >/dev/null; rc=$$?; \
	  [ -z "$$OURS" ] || $$SUDO rm -f $$POLICY; \
	  [ $$rc = 0 ] || { echo "the monitoring tests need it: apt-get install -y prometheus" >&2; exit 1; }; }

# Debian's fuse (fusermount and libfuse), for the tests of `bcdr mount`.
fuse:
	$(call apt-install,fusermount,fuse,the mount tests)

# Debian's strace, e2fsprogs and mount, for the tests of a restore's flushes to disk: strace
# records its syncfs calls; mkfs.ext4, dumpe2fs and losetup make the loop-mounted ext4 whose
# disk fails writes.
disktools:
	$(call apt-install,strace,strace,the restore durability tests)
	$(call apt-install,losetup,mount,the restore durability tests)
	$(call apt-install,mkfs.ext4,e2fsprogs,the restore durability tests)
	$(call apt-install,dumpe2fs,e2fsprogs,the restore durability tests)

# Debian's restic, the baseline `make bench` measures bcdr against.
restic:
	$(call apt-install,restic,restic,make bench)

# Debian's rclone, the baseline of the Azure path in `make bench`.
rclone:
	$(call apt-install,rclone,rclone,make bench)

# Demo: make a small tree, back it up to a local repository, restore it, compare, check.
run: install
	$(PY) -m bcdr.demo

test: install node browser systemd slurm prometheus fuse disktools
	$(PY) -m pytest -q -p no:cacheprovider

# Both corpus sizes (3.35 GiB and 632 MiB as restored), the single 4 GiB file, the Azure path,
# copies and sharded backups: 40-95 minutes on 2 cores (the VM is faster some days; each
# restore waits 10 s first, BENCH_SETTLE).
# bench-quick: the small corpus only, two rounds, no Azure.
bench: install node restic rclone fuse
	$(PY) bench/run.py

bench-quick: install node restic
	BENCH_SIZES=small BENCH_ROUNDS=2 BENCH_SINGLE_MIB=0 BENCH_AZURE=0 BENCH_COPY=0 BENCH_SHARDS=0 $(PY) bench/run.py

lint: install
	$(VENV)/bin/ruff check bcdr tests bench
	$(VENV)/bin/mypy bcdr tests
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) node_modules demo .bcdr bench/out
