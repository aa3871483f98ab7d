# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned exactly and installed first, so nothing later pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH = torch==2.13.0
# diffusers is pinned exactly too: docs/compatibility.md's DiT coverage table (tests/test_dit_coverage.py) is
# generated from this version's own list of pipelines and transformer classes.
DIFFUSERS = diffusers==0.42.1

.PHONY: demo test test-fast install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q $(DIFFUSERS)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/headhunter hunt --calibrate --out runs/demo

test: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The development lane: everything not marked slow (a test carries @pytest.mark.slow where it is defined); CI runs `test`.
test-fast: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs build dist *.egg-info
