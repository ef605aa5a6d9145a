# Quick start: `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a torch that is already installed is never replaced.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.fusec-installed

# The editable install links each module (mypy can follow it): adding or removing
# a module changes its folder's time, and that re-links.
$(VENV)/.fusec-installed: pyproject.toml fusec fusec/cli fusec/report passes kernels bench/
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]" --config-settings editable_mode=strict
	touch $@

demo: setup
	$(VENV)/bin/fusec demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(VENV)/bin/fusec bench --quick

clean:
	rm -rf $(VENV) build dist *.egg-info
