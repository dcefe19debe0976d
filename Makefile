# Billfold: `make run` serves the demo portal, `make test` runs the whole suite.
# Both build .venv and install what is missing, from a clean clone.

PYTHON ?= python3
VENV ?= .venv
PORT ?= 5000
HOST ?= 127.0.0.1
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app portal
# What WeasyPrint (invoice and receipt PDFs) and the PDF tests need from Debian.
APT_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils
# Debian's Chromium, which the browser tests (tests/e2e) drive through Playwright.
# Never `playwright install`: the tests use this browser and download none.
CHROMIUM := /usr/bin/chromium

.PHONY: run run-prod doctor test check typecheck venv system-deps e2e-deps migrate lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "Installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "Billfold needs these system packages. Run:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

# Chromium for the e2e tests: installed as root through apt-get when missing; otherwise
# the suite still runs and the e2e tests are skipped, saying why.
e2e-deps:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  echo "Installing chromium for the e2e browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    || echo "Could not install chromium: the e2e browser tests (tests/e2e) are skipped."; \
	else \
	  echo "Chromium is not installed ($(CHROMIUM)): the e2e browser tests (tests/e2e) are skipped."; \
	  echo "To run them: sudo apt-get install -y chromium"; \
	fi

migrate: venv
	$(FLASK) db upgrade
	$(FLASK) billfold init

run: venv system-deps migrate
	$(FLASK) billfold demo
	@echo "Billfold on http://$(HOST):$(PORT)  (demo logins in README.md)"
	$(FLASK) run --host $(HOST) --port $(PORT)

# Production on this machine: gunicorn (BILLFOLD_WEB_WORKERS), a Celery worker and beat
# on PostgreSQL and Redis, migrated once first; Ctrl-C stops all. See docs/deployment.md.
run-prod: venv system-deps
	$(BIN)/python -m portal.prod

doctor: venv
	$(FLASK) billfold doctor

# Two pytest-xdist workers (the machines this runs on have two cores); each test file
# runs on one worker, so the tests of a file that share a Redis database or a browser
# never run at the same time.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=

test: venv system-deps e2e-deps
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	@[ -x $(CHROMIUM) ] || echo "The e2e browser tests (tests/e2e) were skipped: Chromium is not installed ($(CHROMIUM))."

typecheck: venv
	$(BIN)/mypy portal plans invoices tenants permissions api

# ruff, mypy (strict on the money, ledger and invoice code), then the whole suite.
check: lint typecheck
	$(MAKE) --no-print-directory test

bench: venv
	$(BIN)/python bench/run_all.py

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) instance .pytest_cache
