# Quickstart: `make demo` and `make test` (`make test-fast` while editing). Each creates .venv with pip if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job on the embedded dataset (scikit-learn's digits): online BD-KD,
# then an ONNX FP32/FP16/INT8/INT8-for-CPUs bundle, then the accuracy + calibration gate.
demo: $(STAMP)
	rm -rf runs/quickstart-demo export/quickstart-demo
	$(VENV)/bin/edgekd distill recipes/quickstart.yaml --out runs/quickstart-demo --quiet
	$(VENV)/bin/edgekd export runs/quickstart-demo --out export/quickstart-demo
	$(VENV)/bin/edgekd validate export/quickstart-demo

# The whole suite, CPU only: what CI runs. --durations lists the 25 slowest tests, to keep
# the suite under ~12 minutes on 2 cores (venv set-up included). Two pytest workers, one per
# core, each on one OpenMP thread (most tests train 16 px nets or run small ONNX files, which
# a second thread barely speeds up); --dist loadfile keeps a test file on one worker, so its
# module fixtures (trained runs, bundles) are made once.
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -q -n 2 --dist loadfile --durations=25

# The edit-test loop: the in-process unit tests, meant to take under a minute on 2 quiet
# cores. It leaves out every test marked `slow` (pytest -m "not slow"): whatever trains,
# exports, starts processes (`python -m edgekd`, torchrun, DataLoader workers) or takes
# more than about a second of CPU. Mark such a new test @pytest.mark.slow; tests/conftest.py
# marks every test that uses a fixture which trains. `make test` still runs them all.
# One OpenMP thread unless OMP_NUM_THREADS is set: the tensors here are tiny, and on a
# busy machine the thread pool's waiting made the tests take about 5 times longer.
test-fast: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf runs/quickstart-demo export/quickstart-demo
