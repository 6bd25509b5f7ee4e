# Two commands matter: `make demo` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KINESALITE := tests/kinesalite/node_modules/.installed
# Debian packages the tests drive for real, as package=command: logrotate (rotation tests),
# graphviz (the diagram is up to date), docker-compose (validates docker-compose.yml), chromium
# (the dashboard's headless browser test).
DEBIAN_TOOLS := logrotate=logrotate graphviz=dot docker-compose=docker-compose chromium=chromium
TOOLS_STAMP := $(VENV)/.debian-tools

.PHONY: demo test lint unit install clean

demo: $(STAMP)
	$(BIN)/clickstream demo

test: $(STAMP) $(KINESALITE) $(TOOLS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# pytest exits 5 when it collected nothing: that must fail, not pass quietly.
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(KINESALITE): tests/kinesalite/package.json tests/kinesalite/package-lock.json
	npm ci --prefix tests/kinesalite --no-audit --no-fund --loglevel=error
	touch $(KINESALITE)

# Installs what is missing when run as root (CI, these machines); elsewhere it says what to install
# and the tests that need it skip with that reason.
$(TOOLS_STAMP): $(BIN)/python Makefile
	@missing=""; for pair in $(DEBIAN_TOOLS); do \
	  package=$${pair%%=*}; tool=$${pair##*=}; \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "note: install$$missing (Debian packages) to run the tests that need them" >&2; \
	  fi; \
	fi
	touch $(TOOLS_STAMP)

clean:
	rm -rf $(VENV) tests/kinesalite/node_modules .pytest_cache .ruff_cache
