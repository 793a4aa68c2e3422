# `make run` and `make test` do all the set-up on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install opa run test lint compliance browser bench clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required, found " + sys.version)'
	$(PYTHON) -m venv $(VENV)
	# Its metadata claims Python >= 3.14, but it works on 3.11 (see docs/ARCHITECTURE.md); installing it
	# first lets the project's own requirement on it resolve to the installed copy.
	$(BIN)/pip install --ignore-requires-python opa-golib-python-bindings==0.4.4
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# OPA's server and CLI, the version the embedded engine runs (tools/opa/go.mod pins it),
# built from the Go module proxy: the sidecar tests, the compliance toolchain and the
# sidecar benchmark run it. Rebuilt only when tools/opa changes (from Go's cache: seconds).
# Without Go it says how to get the binary, and the tests that need it skip saying why.
OPA := $(BIN)/opa
opa: $(OPA)

$(OPA): tools/opa/go.mod tools/opa/go.sum tools/opa/main.go tools/opa/build.sh | $(STAMP)
	@if command -v go >/dev/null 2>&1; then tools/opa/build.sh $@; else \
	  echo "Go is not installed: OPA ($@) cannot be built, and the tests that need it will skip."; \
	  echo "Install Go 1.26 (https://go.dev/dl/, or Debian's golang-go if it is 1.26) and run"; \
	  echo "'make opa', or put OPA v$$(sed -n 's/^require github.com\/open-policy-agent\/opa v//p' \
	  tools/opa/go.mod) (https://github.com/open-policy-agent/opa/releases) at $@."; fi

# Actions go to the echo executor (`decision-service echo-executor`, README "Try it")
# unless DECISION_EXECUTORS_FILE says otherwise.
run: install
	DECISION_EXECUTORS_FILE=$${DECISION_EXECUTORS_FILE:-config/executors.local.yaml} \
	  $(BIN)/decision-service serve

lint: install
	$(BIN)/ruff check app tests scripts scripts/bench scripts/update-golden scripts/reliability \
	  scripts/name-folding scripts/compliance
	$(BIN)/mypy

# The compliance toolchain on rego/ with the OPA the service runs (README, "Compliance
# toolchain"): opa fmt, opa check --strict, opa test, and a coverage floor per policy.
compliance: opa
	$(BIN)/python scripts/compliance rego

# Debian's Chromium and ChromeDriver drive the page tests (tests/test_pages.py). Installed
# when missing and this runs as root; otherwise those tests skip and say why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver for the page tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     chromium chromium-driver >/dev/null) \
	  || echo "could not install chromium: the page tests will skip"; \
	else echo "chromium or chromedriver missing and not root: the page tests will skip"; fi

# The suite runs twice: on one Redis server, then on a local three-master Redis Cluster
# (tests/redis_cluster.py starts it from the same redis-server binary).
test: lint browser opa compliance
	$(BIN)/decision-service rules validate rules/
	$(BIN)/decision-service rules test rules/
	$(BIN)/decision-service policy test rego/
	$(BIN)/pytest
	DECISION_TEST_REDIS=cluster $(BIN)/pytest

# Benchmarks (docs/PERFORMANCE.md): wrk from Debian for the HTTP ones (installed when
# missing and running as root), zen-engine and py-spy from PyPI.
bench: install opa
	$(BIN)/pip install -e '.[bench]'
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
	  || echo "wrk is missing: the HTTP benchmarks will say so"
	$(BIN)/python scripts/bench all

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
