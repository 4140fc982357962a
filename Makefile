# install / demo / test / bench. Every target installs first if needed; `make install` twice does nothing the second time.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
OUT ?= out

.PHONY: install demo test cuda-check bench env clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@echo "== system packages (libusb for open3d)"
	@dpkg -s libusb-1.0-0 >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libusb-1.0-0; }
	@echo "== virtual environment $(VENV)"
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@echo "== torch 2.13.0 (CPU wheel), numpy<2, build tools"
	@$(PIP) install -q torch==2.13.0 "numpy>=1.24,<2" wheel ninja
	@echo "== mmcv 2.1.0 with ops, from source (~20 min the first time, then from pip's wheel cache)"
	@$(PY) -c "import mmcv.ops" >/dev/null 2>&1 || { \
	  $(PIP) install -q "setuptools<70" 2>&1 | grep -v "dependency conflicts\|requires setuptools\|pip's dependency resolver" || true; \
	  MMCV_WITH_OPS=1 MAX_JOBS=$$(nproc) $(PIP) install --no-build-isolation mmcv==2.1.0; }
	@echo "== perception and its dependencies"
	@$(PIP) install -q -e ".[dev]"
	@$(PY) -c "import mmcv.ops, mmdet3d, spconv, open3d, ray.train.torch, safetensors" || { echo "install check failed"; exit 1; }
	@touch $@
	@echo "== installed"

demo: install
	$(PY) tools/demo.py --data $(DATA) --out $(OUT)/demo

test: install cuda-check
	$(PY) -m pytest -q

cuda-check:
	@bash tools/check_cuda_sources.sh

bench: install
	$(PY) tools/benchmark.py all --json $(OUT)/benchmark.json

env: install
	$(PY) tools/collect_env.py

clean:
	rm -rf $(OUT) .pytest_cache
