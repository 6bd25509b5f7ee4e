# Two commands matter: `make demo` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KINESALITE := tests/kinesalite/node_modules/.installed

.PHONY: demo test lint unit install clean

demo: $(STAMP)
	$(BIN)/clickstream demo

test: $(STAMP) $(KINESALITE)
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

clean:
	rm -rf $(VENV) tests/kinesalite/node_modules .pytest_cache .ruff_cache
