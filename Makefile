# Each target builds the virtual environment it needs from this project's own files.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-gpu bench bench-quick cold-start clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,demo,bench,mpi]'
	touch $(STAMP)

# the main job: train the digits MLP with each optimizer, draw the optimizer paths
demo: $(STAMP)
	$(PY) -m numba_opt demo --out demo_output
	$(PY) -m numba_opt plot --out demo_output

# The CUDA kernels run under numba's CUDA simulator here (no GPU needed) ...
test: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q

# ... and unchanged on a real NVIDIA GPU.
test-gpu: $(STAMP)
	NUMBA_ENABLE_CUDASIM=0 $(PY) -m pytest -q

# pyperf suite: every peer of a case in one run; tables and plot under bench/results/
bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

cold-start: $(STAMP)
	$(PY) bench/cold_start.py

clean:
	rm -rf $(VENV) build *.egg-info
