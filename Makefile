# Two-command set-up: `make demo` (install, then classify sample_images/) and `make test`.
# Both create .venv once; the stamp files make a second run skip the installs (they redo them
# when pyproject.toml changes). torch is installed first and pinned: the CPU build of 2.13.0
# lies on this machine's disk, while a bare "torch" requirement would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
TORCH := torch==2.13.0
PIP := $(VENV)/bin/python -m pip install --quiet

.PHONY: demo test clean

demo: $(VENV)/.installed
	$(VENV)/bin/bit classify sample_images/

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest -q

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) $(TORCH)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV)
