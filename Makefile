# tradebotd developer commands. `make run`, `make test` and `make demo` do all set-up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
TRADEBOTD := $(PY) -m tradebotd
EXAMPLE := tradebotd/examples/sma_crossover.js

.PHONY: install run demo test lint bench wasm wasm-examples install-service clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Paper trading on live Binance market data with the example strategy (Ctrl-C to stop).
run: install
	$(TRADEBOTD) db init
	$(TRADEBOTD) strategy add "SMA crossover (example)" --file $(EXAMPLE) --asset btcusdt --interval 1m \
		--param fast=5 --param slow=20 --if-missing > .example-strategy-id
	$(TRADEBOTD) strategy start $$(cat .example-strategy-id)
	$(TRADEBOTD) run

# The daemon against a local replay of the bundled candle series: trades within a minute, no network.
demo: install
	$(PY) -m tradebotd.demo --seconds 60

test: install
	$(PY) -m pytest -q
	$(PY) -m mypy
	$(PY) -m ruff check tradebotd tests bench

lint: install
	$(PY) -m ruff check tradebotd tests bench
	$(PY) -m mypy

# Latency and throughput measurements: a table on stdout and bench-results.json.
bench: install
	$(PY) -m bench --out bench-results.json

# Rebuild the QuickJS-NG sandbox (tradebotd/sandbox/qjs/tb_qjs.wasm); `make install` also builds it.
wasm: install
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
