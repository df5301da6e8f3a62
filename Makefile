# One entry point for every set-up step: `make demo` and `make test` work on a
# fresh Debian machine (as root, apt-get installs the test peers when missing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Debian packages the tests start as real peers, keyed by a command each provides.
SYSDEPS := sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client \
           dig:bind9-dnsutils dnsmasq:dnsmasq dnsperf:dnsperf tcpdump:tcpdump \
           ip:iproute2 iperf3:iperf3 nft:nftables unshare:util-linux getent:libc-bin \
           socat:socat setsid:util-linux
# Libraries, by the name ldconfig knows them: libsodium gives the chacha20 tags
# (tunnel/backends/poly1305.py; its tests skip without it).
SYSLIBS := libsodium.so.23:libsodium23

.PHONY: all venv sysdeps test check fmt demo demo-once bench bench-quick fuzz stress clean

all: check test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fast]'
	touch $@

venv: $(VENV)/.installed

# Install the missing test peers when apt-get is there; say what is missing otherwise.
sysdeps:
	@missing=""; for pair in $(SYSDEPS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; done; \
	for pair in $(SYSLIBS); do lib=$${pair%%:*}; pkg=$${pair##*:}; \
	  /sbin/ldconfig -p 2>/dev/null | grep -q "$$lib " || missing="$$missing $$pkg"; done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing test peers:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing test peers (tests that need them will be skipped):$$missing"; fi; \
	fi

test: venv sysdeps
	$(PY) -m pytest -q -p no:cacheprovider

check: venv
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy --strict

fmt: venv
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

demo: venv
	$(BIN)/blitzdns demo

demo-once: venv
	$(BIN)/blitzdns demo --once

# The report's chart needs matplotlib: the 'bench' extra, installed only for these targets.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

# Every bench, then bench/results/REPORT.md + ratios.png + <date>-<commit>.json (bench/report.py).
bench: venv sysdeps $(VENV)/.bench-installed
	$(PY) bench/report.py run

# The headline ratios with small counts (under a minute), reported under bench/results/quick/.
bench-quick: venv sysdeps $(VENV)/.bench-installed
	$(PY) bench/report.py run --quick

# Bounded, loopback only: a million malformed packets and TCP abuse against the resolver,
# then the long run of the fuzz targets over its parsers and decision core, and of the fast
# path's properties against dnslib.
fuzz: venv sysdeps
	$(PY) bench/fuzz_dns.py
	BLITZDNS_FUZZ_EXAMPLES=20000 $(PY) -m pytest -q -p no:cacheprovider tests/dns/test_fuzz_targets.py
	BLITZDNS_FASTPATH_EXAMPLES=3000 $(PY) -m pytest -q -p no:cacheprovider tests/dns/test_fastpath.py

# The resolver and the tunnel under faults (bench/stress_dns.py, bench/stress_tunnel.py;
# SOAK= seconds of the tunnel's soak, default 180).
SOAK ?= 180
stress: venv sysdeps
	$(PY) bench/stress_dns.py
	$(PY) bench/stress_tunnel.py --soak $(SOAK)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
