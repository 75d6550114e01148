# The two commands a newcomer needs: `make demo` and `make test`. Everything else is installed here.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export XDG_RUNTIME_DIR ?= /tmp/campaigns-runtime-$(shell id -u)

.PHONY: sync demo test test-fast faults scale lint screenshots bench stop clean

.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install --quiet --disable-pip-version-check uv

.venv/.synced: $(UV) pyproject.toml uv.lock
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	$(UV) sync --locked --quiet
	@touch $@

sync: .venv/.synced

demo: sync
	$(UV) run --locked campaigns demo

# ruff (lint and format), mypy (strict on the domain folders: pyproject.toml) and the import contract
# (tests/test_layout.py: the README's layout table), which runs alone, without the test services.
lint: sync
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy campaigns sandbox flows tasks deployments blocks
	$(UV) run --locked pytest --noconftest -p no:cacheprovider -q tests/test_layout.py

# Two workers (pytest-xdist), each with its own database, Redis db and Prefect server (tests/conftest.py): most
# tests wait on flows, sandboxes and timers rather than on the two cores. The fault suite's fast variants run
# here too. The `campaigns serve` modules (console, browser) then run alone in one process: under xdist, beside
# the other worker, they missed their timings in CI.
SERVE_TESTS := tests/test_console.py tests/test_ui_browser.py tests/test_serve_capacity.py tests/test_many_campaigns.py
test: lint
	$(UV) run --locked pytest -n 2 --dist loadgroup --no-loadscope-reorder $(addprefix --ignore=,$(SERVE_TESTS)) \
		--ignore=tests/test_work_pool.py
	$(UV) run --locked pytest $(SERVE_TESTS)

test-fast: sync
	$(UV) run --locked pytest tests/unit -q -p no:cacheprovider

# The fault suite, fast and heavy variants (marker `heavy`): bigger campaigns, the machine's Postgres cluster
# restarted (other databases on it see it too, for a second), the Prefect server restarted. One line per scenario:
# duplicates, missing, time to recover.
faults: sync
	$(UV) run --locked pytest tests/faults -m "heavy or not heavy" -p no:cacheprovider

# The work-pool path, run for real (not in `make test`: minutes of set-up): a Prefect server on Postgres,
# prefect deploy --all, process workers; four campaigns over two workers, and the heavy variants: ten queued, a
# run a lost worker left Pending, a worker killed mid-send, three numbers at 1,000 msg/s over one, two and three
# workers (tests/test_work_pool.py).
scale: sync
	$(UV) run --locked pytest tests/test_work_pool.py -m "heavy or not heavy" -p no:cacheprovider -s

# The browser tests (pytest -m browser, headless /usr/bin/chromium) save what the Prefect UI shows to docs/screenshots/.
screenshots: sync
	rm -f docs/screenshots/*.png
	SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(UV) run --locked pytest -m browser

bench: sync
	$(UV) run --locked python -m bench.audience
	$(UV) run --locked python -m bench.throughput --chart docs/charts/send-rate.png
	$(UV) run --locked python -m bench.throughput --campaigns 2
	$(UV) run --locked python -m bench.limiter
	$(UV) run --locked python -m bench.webhooks
	$(UV) run --locked python -m bench.webhook_flood
	$(UV) run --locked python -m bench.ingest
	$(UV) run --locked python -m bench.stats
	$(UV) run --locked python -m bench.freshness --chart docs/charts/funnel.png
	$(UV) run --locked python -m bench.freshness

stop:
	@if [ -x .venv/bin/campaigns ]; then .venv/bin/campaigns stop --all; fi

clean: stop
	rm -rf .campaigns .venv .tools
