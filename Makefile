# Each target builds the virtual environment it needs from this project's own files.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-gpu bench-gpu bench bench-quick cold-start mutation mutation-report clean

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

# On a GPU: each CUDA step's launches and host syncs, and its time against the HBM roof
# (bench/results/gpu/); under NUMBA_ENABLE_CUDASIM=1 a smoke test of the same code
bench-gpu: $(STAMP)
	NUMBA_ENABLE_CUDASIM=0 $(PY) bench/gpu_roof.py

# pyperf suite: every peer of a case in one run; tables and plot under bench/results/
bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

cold-start: $(STAMP)
	$(PY) bench/cold_start.py

# Mutation testing, on demand only (not part of test, never in CI): cosmic-ray mutates the listed
# modules on disk and runs a test selection per module with NUMBA_DISABLE_JIT=1; prints the score
# and every survivor.  Hours on 2 cores for all sessions: name some with SESSIONS="math
# lr_scheduler"; a stopped run resumes where it was.  See tests/MUTATION.md.
MUT_VENV := .venv-mut
SESSIONS ?=
$(MUT_VENV)/.installed:
	$(PYTHON) -m venv $(MUT_VENV)
	$(MUT_VENV)/bin/pip install --quiet 'cosmic-ray==8.7.0'
	touch $@

mutation: $(STAMP) $(MUT_VENV)/.installed
	$(MUT_VENV)/bin/python tools/mutation/run.py --python $(PY) $(SESSIONS)

mutation-report: $(MUT_VENV)/.installed
	$(MUT_VENV)/bin/python tools/mutation/run.py --python $(PY) --report-only $(SESSIONS)

clean:
	rm -rf $(VENV) $(MUT_VENV) build *.egg-info
