# textclf developer tasks. Everything runs inside $(VENV), which `make install` creates on first use.
#
#   make install                     # venv + torch + textclf in editable mode with dev,serve,onnx,tune extras
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   make browser                     # Chromium for the headless-browser test of report.html (Debian, as root)
#   make test | lint | docs | demo | bench | clean

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,serve,onnx,tune
PYTEST_ARGS ?=
BENCH_ARGS ?=

VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LINT_PATHS := $(wildcard textclf tests examples bench)

.PHONY: help install browser demo test lint docs bench clean distclean

help:
	@echo "targets: install browser demo test lint docs bench clean distclean"
	@echo "variables: PYTHON=$(PYTHON) VENV=$(VENV) TORCH_SPEC='$(TORCH_SPEC)' EXTRAS=$(EXTRAS)"

# Create the virtual environment once.
$(VPY):
	$(PYTHON) -m venv $(VENV)

# Install once; re-install only when the packaging metadata changes (the stamp is newer otherwise).
# torch goes first so that TORCH_SPEC (e.g. a CUDA index) decides which build is used.
$(STAMP): setup.cfg setup.py | $(VPY)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# tests/test_html_report.py opens report.html in a headless Chromium; without one that test is skipped (and says so).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
		echo "Chromium is installed"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium; \
	else \
		echo "install Chromium with your system's package manager (Debian/Ubuntu: sudo apt install chromium)" >&2; \
		exit 1; \
	fi

demo: install
	$(VPY) examples/quickstart.py

test: install
	$(VPY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)

docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -e ".[$(EXTRAS),bench]"
	touch $@

bench: $(BENCH_STAMP)
	@if [ -f bench/__main__.py ]; then \
		$(VPY) -m bench $(BENCH_ARGS); \
	elif [ -f bench/run.py ]; then \
		$(VPY) bench/run.py $(BENCH_ARGS); \
	else \
		echo "bench/ is not there yet (expected bench/__main__.py or bench/run.py)" >&2; \
		exit 1; \
	fi

# Build outputs and caches; keeps $(VENV) and training runs (runs/).
clean:
	rm -rf build dist site .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also remove the virtual environment.
distclean: clean
	rm -rf $(VENV)
