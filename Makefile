# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv on first use and are idempotent afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.privfl-installed
# The tests also cover the optional integrations: `make test` adds the flower and ray extras.
EXTRAS := $(VENV)/.privfl-extras-installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@echo "[1/3] creating the virtual environment $(VENV) (once)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[2/3] installing $(TORCH) (CPU build; the first time this downloads ~200 MB and takes a few minutes)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --progress-bar off '$(TORCH)'
	@echo "[3/3] installing privfl and its dependencies (opacus, dp-accounting, scipy, scikit-learn, matplotlib, ...)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --progress-bar off -e '.[dev]'
	touch $(STAMP)
	@echo "setup done: $(VENV) is ready"

$(EXTRAS): $(STAMP)
	@echo "installing the optional integrations the tests cover: privfl[flower,ray] (Flower, Ray, cryptography)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --progress-bar off -e '.[dev,flower,ray]'
	touch $(EXTRAS)

demo: $(STAMP)
	@echo "running the bundled evaluation (50 cells; progress below; results in results/default/)"
	$(BIN)/privfl run

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(EXTRAS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) build dist *.egg-info results
