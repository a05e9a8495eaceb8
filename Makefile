# Quickstart: `make demo` and `make test`. Both create .venv with pip if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

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

test: $(STAMP)
	$(VENV)/bin/pytest -q

clean:
	rm -rf runs/quickstart-demo export/quickstart-demo
