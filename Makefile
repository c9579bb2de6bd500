# Two entry points for a fresh machine: `make demo` (set up, then train on the built-in demo data)
# and `make test` (set up, then run the test suite). Both create .venv in the repository.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zerosr-installed

.PHONY: setup demo test lint docs clean

setup: $(STAMP)

# Without an NVIDIA driver, install the CPU build of torch first; the package's torch range is
# then already satisfied and pip pulls no CUDA wheels. With a driver, pip picks a CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch==2.13.0"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) train.py

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests bench train.py

# The documentation site (docs/, mkdocs.yml) into site/; --strict makes a broken link or anchor an error.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) outputs/* multirun site
