# isonode: `make run` starts the appliance on the embedded defaults, `make test` runs the whole suite.
# Everything is installed on demand: Python packages into .venv, Debian packages with apt-get when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export TCP_NODELAY := 1

.PHONY: run test test-fast bench lint system-deps test-deps model clean cuda gpu-check web campaigns

$(VENV)/.stamp-base: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# The suite includes the model toolchain's smoke run, so tests get the `model` extra (torch==2.13.0, CPU).
$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install -q -e '.[test,model]'
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp-test
	$(PIP) install -q -e '.[test,model,bench]'
	touch $@

# Debian packages the appliance or its tests use; installed only when a tool is missing.
APT_PACKAGES := dcmtk dicom3tools orthanc chromium g++ libegl1 libegl-mesa0 libosmesa6
system-deps:
	@missing=0; \
	for tool in storescu echoscu findscu movescu getscu storescp dciodvfy Orthanc chromium g++; do \
	  command -v $$tool >/dev/null 2>&1 || missing=1; \
	done; \
	ldconfig -p | grep -q libEGL_mesa || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# The bedside page: npm packages pinned by package-lock.json, bundled into appliance/web/static (not committed).
WEB_SRC := appliance/web/frontend
WEB_BUILT := appliance/web/static/index.html
$(WEB_BUILT): $(WEB_SRC)/package.json $(WEB_SRC)/package-lock.json $(shell find $(WEB_SRC) -path '*/node_modules' -prune -o -type f -print 2>/dev/null)
	cd $(WEB_SRC) && npm ci --no-audit --no-fund --loglevel=error && npm run build
	touch $@
web: $(WEB_BUILT)

# The node keeps freed memory for the next job, as its systemd unit runs it (firmware_config/systemd).
NODE_MALLOC := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
run: $(VENV)/.stamp-base web
	$(NODE_MALLOC) $(VENV)/bin/isonode serve --config firmware_config/isonode.yaml

# The whole suite, with the small version of every hardening campaign; their full runs are `make campaigns`.
test: system-deps $(VENV)/.stamp-test web
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -m "not campaign"

# The hardening campaigns at full size (kill -9 200 times, 1040 malformed inputs, disk full held 45 s, 4 senders
# of 512x512 series), each printing its seed and figures: about 15-20 min on 2 cores.
campaigns: system-deps $(VENV)/.stamp-test web
	$(VENV)/bin/pytest -q -s -m campaign

# The default suite minus the tests marked slow.
test-fast: system-deps $(VENV)/.stamp-test web
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check .

bench: system-deps $(VENV)/.stamp-bench web
	$(PY) -m bench

# Rebuild the model bundle from scratch: labels, teacher (five phases, 3600 steps, the last three averaged),
# distilled + pruned student, INT8, evaluation. The committed bundle is the 2026-12-04 run on 2 Zen 4 cores
# (AVX512-BF16): 99 min (labels 2, teacher 69.5 at 1.0-1.25 s per step, student and fine-tuning 21, export
# and evaluation 6). Measured from scratch on 2 Zen 5 cores with native bf16: 63 min (teacher 46, student and
# fine-tuning 13, export and evaluation 4), at 0.7-0.9 s per teacher step; on 2 Zen 4 cores (AVX512-BF16)
# 77 min (teacher 55, student and fine-tuning 18, labels 2, export and evaluation 3), 0.95-1.08 s per teacher
# step; on 2 Intel Xeon cores with AMX-BF16 0.62-0.83 s per teacher step (teacher 39-44 min, student and
# fine-tuning 15-15.5 min: 59-65 min in all). Where bf16 is not native it trains in FP32: a 2-core Zen 2
# took 2.8-3.6 s per teacher step, so about 4 h there, and 2 first-generation EPYC (Zen 1) cores 6.2 s
# (the first 80 steps; 7.2-7.6 s in a bare forward + backward): about 6-7 h for the teacher alone.
# Each training stage checkpoints into build/model every 100 steps: run it again after a kill or a
# reboot and it resumes where it stopped.
model: $(VENV)/.stamp-test
	$(PY) -m compiler.build --out models/ct_chest --work build/model --threads $$(nproc)
	$(PY) -m compiler.precision_check --bundle models/ct_chest --threads $$(nproc)

# The CUDA marching-cubes kernels as a fatbin (sm_87 Jetson Orin, sm_90 H100, PTX); needs nvcc, no GPU.
cuda: $(VENV)/.stamp-base
	$(PY) kernels/cuda/build.py

# Run on a lent GPU machine (the `device` tool: `make gpu-check` there, nothing carried): its python3 already
# has numpy, scipy, pybind11, pytest, scikit-image and cuda-bindings, so this builds the CPU extension and the
# fatbin in place, runs the GPU-marked tests (CUDA output equal to the CPU kernel's), then the GPU rows of the
# marching-cubes benchmark on synthetic volumes (the shared CT does not travel). A few minutes on an H100.
GPU_PYTHON ?= python3
gpu-check:
	nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
	$(GPU_PYTHON) setup.py -q build_ext --inplace
	$(GPU_PYTHON) kernels/cuda/build.py
	$(GPU_PYTHON) -m pytest -q -p no:cacheprovider -m gpu tests/test_marching_cubes_cuda.py
	BENCH_REPEATS=5 $(GPU_PYTHON) -m bench.bench_marching_cubes --gpu

clean:
	rm -rf $(VENV) build var *.egg-info
