# Two entry points (see README): `make serve` and `make test`. Both set up everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup serve test lint clean

setup: $(VENV)/.installed

# torch==2.13.0 is installed on its own first: on CPU machines pip finds the local CPU wheel, and the
# package's open `torch>=2.1` floor is then already satisfied, so no CUDA build is ever resolved.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

serve: setup
	$(VENV)/bin/zoo serve --random-weights

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .zoo model_store
