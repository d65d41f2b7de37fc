# modelpull: `make serve` runs the server, `make test` runs the whole suite. Both install
# everything they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Bytecode for our own modules too: an editable install has none, and with
# PYTHONDONTWRITEBYTECODE set Python would compile them again at every start (~30 ms).
install: $(STAMP)
	$(BIN)/python -m compileall -q src

serve: install
	$(BIN)/modelpull serve

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/transfer.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
