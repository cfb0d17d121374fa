# tradebotd developer commands. `make run`, `make test` and `make demo` do all set-up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
SUM := $(shell cksum < pyproject.toml | cut -d' ' -f1)
# What running needs (the package and its dependencies), and the dev tools on top of it (pytest,
# mypy, ruff, ziglang for `make wasm`): `make run` and `make demo` install only the first.
RUN_STAMP := $(VENV)/.installed-run-$(SUM)
DEV_STAMP := $(VENV)/.installed-dev-$(SUM)
TRADEBOTD := $(PY) -m tradebotd
EXAMPLE := tradebotd/examples/sma_crossover.js

.PHONY: install install-dev run demo test lint bench wasm wasm-examples install-service clean

$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || { echo "==> creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing tradebotd and what it needs to run into $(VENV)"
	@echo "    (the first time takes a minute or two: pip builds the QuickJS sandbox with ziglang)"
	@$(PIP) install --upgrade pip
	@$(PIP) install -e .
	@rm -f $(VENV)/.installed-run-*
	@touch $@
	@echo "==> installed: $$($(PY) -m tradebotd --version)"

# The dev tools without rebuilding the package: the [dev] extra's pins, read from pyproject.toml.
$(DEV_STAMP): $(RUN_STAMP)
	@echo "==> installing the dev tools (pytest, mypy, ruff, ziglang) into $(VENV)"
	@$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['dev']))" > $(VENV)/dev-requirements.txt
	@$(PIP) install -r $(VENV)/dev-requirements.txt
	@rm -f $(VENV)/.installed-dev-*
	@touch $@

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

# Paper trading on live Binance market data with the example strategy (Ctrl-C to stop). Without
# network the daemon keeps retrying; the probe says once that `make demo` needs none.
run: install
	$(TRADEBOTD) db init
	@$(PY) -m tradebotd.symbol_check btcusdt 2>/dev/null || \
		echo "==> Binance does not answer from here (market.rest_url); the daemon will keep retrying. \
	\`make demo\` trades the same way against a local replay, with no network."
	$(TRADEBOTD) strategy add "SMA crossover (example)" --file $(EXAMPLE) --asset btcusdt --interval 1m \
		--param fast=5 --param slow=20 --if-missing --no-check > .example-strategy-id
	$(TRADEBOTD) strategy start $$(cat .example-strategy-id)
	$(TRADEBOTD) run

# The daemon against a local replay of the bundled candle series: trades within a minute, no network.
demo: install
	$(PY) -m tradebotd.demo --seconds 60

# wasm first: a checkout that pulled a change to the sandbox's C or JS must not test a stale build.
test: install-dev wasm
	$(PY) -m pytest -q
	$(PY) -m mypy
	$(PY) -m ruff check tradebotd tests bench

lint: install-dev
	$(PY) -m ruff check tradebotd tests bench
	$(PY) -m mypy

# backtesting.py for the bench's versus section, into the bench environment only (never a
# dependency of tradebotd; the tests do not need it): bench/requirements-backtesting.txt.
BENCH_SUM := $(shell cksum < bench/requirements-backtesting.txt | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.installed-bench-$(BENCH_SUM)

$(BENCH_STAMP): $(DEV_STAMP) bench/requirements-backtesting.txt
	@echo "==> installing backtesting.py (bench/requirements-backtesting.txt) into $(VENV) for make bench"
	@$(PIP) install -r bench/requirements-backtesting.txt
	@rm -f $(VENV)/.installed-bench-*
	@touch $@

# Latency and throughput measurements: a table on stdout and bench-results.json.
bench: install-dev wasm $(BENCH_STAMP)
	$(PY) -m bench --out bench-results.json

# Rebuild the QuickJS-NG sandbox (tradebotd/sandbox/qjs/tb_qjs.wasm); `make install` also builds it.
wasm: install-dev
	$(PY) -m tradebotd.sandbox.qjs.build

# Rebuild the AssemblyScript example strategy (needs Node.js and npm; the built .wasm is committed).
wasm-examples:
	$(MAKE) -C strategies_wasm assemblyscript

# Install the systemd service on this machine (as root): system user, /opt/tradebotd/venv,
# /etc/tradebotd/{config.toml,tradebotd.env}, /var/lib/tradebotd. Idempotent; see deploy/install.sh.
# INSTALL_FLAGS=--dry-run prints what it would do; DESTDIR=/stage lays the files out there.
install-service:
	deploy/install.sh $(INSTALL_FLAGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .example-strategy-id
