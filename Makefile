# All set-up happens here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv demo test test-fast clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the pinned CPU wheel, so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# GFN-xTB (dxtb): its helper packages declare numpy<2, so the pinned set goes in without resolution
	$(PY) -m pip install --quiet --no-deps $$($(PY) -c "from tfftmol.chem.rewards.xtb import XTB_INSTALL; print(XTB_INSTALL)")
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m tfftmol.cli demo-mol

test: $(STAMP)
	$(PY) -m pytest -q --timeout=900 -n auto --dist worksteal tests

# Everything but the tests marked slow (the README's 'make test' runs them all).
test-fast: $(STAMP)
	$(PY) -m pytest -q --timeout=900 -n auto --dist worksteal -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache
