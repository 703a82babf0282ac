# Two entry points (see README): `make serve` and `make test`. Both set up everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup serve test lint clean prometheus-tools k8s-tools perf-analyzer-tools

setup: $(VENV)/.installed
	$(VENV)/bin/zoo assets  # MTCNN face-detector weights for the FTCN handler (verified, cached)

# torch==2.13.0 is installed on its own first: on CPU machines pip finds the local CPU wheel, and the
# package's open `torch>=2.1` floor is then already satisfied, so no CUDA build is ever resolved.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

serve: setup
	$(VENV)/bin/zoo serve --random-weights

# A real Triton server, for the Triton backend tests and for `zoo serve --engine triton`: PyTriton (which
# bundles tritonserver and its Python backend; CPU is enough) in its own venv made from Debian's Python 3.11 (the
# backend stub needs the shared libpython that pyenv's build lacks). The zoo's models run inside that stub, so
# the venv also gets torch (the CPU wheel first, as in $(VENV)) and this package's runtime dependencies,
# resolved together with nvidia-pytriton so that pip keeps the tritonclient PyTriton needs.
# Best effort: when that interpreter or an install is unavailable, the reason goes to
# $(TRITON_VENV)/UNAVAILABLE, the Triton tests skip citing it, and set-up goes on (retried on the next run).
TRITON_VENV ?= .venv-triton
TRITON_PYTHON ?= /usr/bin/python3.11
TRITON_PIP = $(TRITON_VENV)/bin/python -m pip --disable-pip-version-check install -q
$(TRITON_VENV)/.installed: pyproject.toml
	@mkdir -p $(TRITON_VENV) && rm -f $(TRITON_VENV)/UNAVAILABLE
	@if ! test -x $(TRITON_PYTHON); then \
	  echo "$(TRITON_PYTHON) not found (Debian packages python3.11, python3.11-venv)" > $(TRITON_VENV)/UNAVAILABLE; \
	elif ! { test -x $(TRITON_VENV)/bin/python || $(TRITON_PYTHON) -m venv $(TRITON_VENV); }; then \
	  echo "'$(TRITON_PYTHON) -m venv $(TRITON_VENV)' failed (Debian package python3.11-venv?)" > $(TRITON_VENV)/UNAVAILABLE; \
	elif ! $(TRITON_PIP) nvidia-pytriton==0.7.0 numpy; then \
	  echo "pip install nvidia-pytriton==0.7.0 into $(TRITON_VENV) failed" > $(TRITON_VENV)/UNAVAILABLE; \
	elif ! $(TRITON_PIP) torch==2.13.0; then \
	  echo "pip install torch==2.13.0 into $(TRITON_VENV) failed (the zoo's models cannot run in Triton)" \
	    > $(TRITON_VENV)/UNAVAILABLE; \
	elif ! $(TRITON_PIP) -e . nvidia-pytriton==0.7.0; then \
	  echo "pip install -e . into $(TRITON_VENV) failed (the handlers' dependencies)" > $(TRITON_VENV)/UNAVAILABLE; \
	else touch $@; fi
	@if test -f $(TRITON_VENV)/UNAVAILABLE; then echo "WARNING: Triton tests will skip: $$(cat $(TRITON_VENV)/UNAVAILABLE)"; fi

# Prometheus and promtool (Debian package `prometheus`) for tests/e2e/test_observability.py and
# `zoo serve --with-prometheus`. Best effort: installed when promtool is missing and we are root; otherwise a
# warning, and those tests skip saying why.
prometheus-tools:
	@if ! command -v promtool >/dev/null && ! test -x /usr/bin/promtool; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q prometheus >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q prometheus >/dev/null 2>&1; } \
	    || echo "WARNING: 'apt-get install prometheus' failed: the Prometheus tests will skip"; \
	  else echo "WARNING: promtool not found and not root: 'apt-get install prometheus' to run the Prometheus tests"; fi; \
	fi

# kubectl (its built-in kustomize renders deploy/k8s offline) for tests/e2e/test_deploy_manifests.py. Best effort,
# like prometheus-tools: the `kubectl` package where the machine's apt sources have it, else Debian's
# `kubernetes-client`; without one (or with a kustomize older than v4) the rendering tests skip saying why.
k8s-tools:
	@if ! command -v kubectl >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q kubectl >/dev/null 2>&1 || apt-get install -y -q kubernetes-client >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && { apt-get install -y -q kubectl >/dev/null 2>&1 \
	         || apt-get install -y -q kubernetes-client >/dev/null 2>&1; }; } \
	    || echo "WARNING: 'apt-get install kubectl' failed: the Kubernetes manifest tests will skip"; \
	  else echo "WARNING: kubectl not found and not root: install it to run the Kubernetes manifest tests"; fi; \
	fi

# KServe's Python SDK for tests/serving/test_kserve_sdk.py, in its own venv (its pins conflict with ours). Best
# effort, like the Triton venv: a failure's reason goes to $(KSERVE_VENV)/UNAVAILABLE and the test skips citing it.
KSERVE_VENV ?= .venv-kserve
$(KSERVE_VENV)/.installed:
	@mkdir -p $(KSERVE_VENV) && rm -f $(KSERVE_VENV)/UNAVAILABLE
	@if ! { test -x $(KSERVE_VENV)/bin/python || python3 -m venv $(KSERVE_VENV); }; then \
	  echo "'python3 -m venv $(KSERVE_VENV)' failed" > $(KSERVE_VENV)/UNAVAILABLE; \
	elif ! $(KSERVE_VENV)/bin/python -m pip --disable-pip-version-check install -q kserve==0.21.0; then \
	  echo "pip install kserve==0.21.0 into $(KSERVE_VENV) failed" > $(KSERVE_VENV)/UNAVAILABLE; \
	else touch $@; fi
	@if test -f $(KSERVE_VENV)/UNAVAILABLE; then echo "WARNING: the KServe SDK test will skip: $$(cat $(KSERVE_VENV)/UNAVAILABLE)"; fi

# perf_analyzer (shipped in tritonclient[all]) for tests/serving/test_perf_analyzer.py and bench/perf_analyzer.py:
# it needs Debian's libb64-0d and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel; the tests put its folder
# on LD_LIBRARY_PATH), even on CPU. Best effort, like prometheus-tools: without them those tests skip saying why.
perf-analyzer-tools: setup
	@if ! ldconfig -p 2>/dev/null | grep -q libb64.so.0d; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q libb64-0d >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libb64-0d >/dev/null 2>&1; } \
	    || echo "WARNING: 'apt-get install libb64-0d' failed: the perf_analyzer tests will skip"; \
	  else echo "WARNING: libb64-0d missing and not root: 'apt-get install libb64-0d' to run the perf_analyzer tests"; fi; \
	fi
	@$(PIP) install -q nvidia-cuda-runtime-cu12 \
	  || echo "WARNING: pip install nvidia-cuda-runtime-cu12 failed: the perf_analyzer tests will skip"

test: setup $(TRITON_VENV)/.installed $(KSERVE_VENV)/.installed prometheus-tools k8s-tools perf-analyzer-tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(KSERVE_VENV) .zoo model_store
