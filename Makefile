# make bench      set up .venv from nothing (torch CPU, the package with its C++ kernels,
#                 test/bench deps) and print the benchmark report (writes benchmarks/results/;
#                 3 min 34 s on 2 idle cores: the long calls timed fewer times, the slowest
#                 cases smaller; benchmarks/report.py, docs/BENCHMARKS.md)
# make bench-full the same report with the cases and timing schedule of the reports before 2026-12-06
# make test       same set-up, then the test suite (reference, CPU kernel, Triton kernels
#                 under TRITON_INTERPRET=1, the CUDA kernels on the emulated backend cuda_emu;
#                 the tests that need a GPU skip without one)
# make cmake-test standalone CMake build of the torch-free core + CTest, and every .cu
#                 compiled for sm_80 and sm_90 when nvcc is found, and the CUDA emulator's
#                 planted-bug tests
# make emu-sanitize the CUDA kernels on the emulator (torch-free CTest) and the planted bugs
#                 under AddressSanitizer + UBSan
# make cuda-build the CUDA wheel against the CUDA torch (TORCH_CUDA_VERSION), installed into a
#                 clean venv and checked from outside the tree (no GPU needed)
# make wheel-cu12 the CUDA 12 wheel: Debian's CUDA 12.4 toolkit completed from the package index
#                 (scripts/cuda12_toolkit.sh), a venv with a CUDA 12 torch (CU12_TORCH_VERSION)
# make cu12-build wheel-cu12, installed into a clean venv, checked, and the test suite run
#                 against it from outside the tree (no GPU needed)
# make wheels     cuda-build and cu12-build, then cpu-check: the CPU wheel installed into a
#                 clean venv where the suite but the fuzzes runs against it, plus the refusal of
#                 wheels built for another torch
# make cuda-clean, cu12-clean  drop a CUDA wheel's venvs (and CUDA 12's wheelhouse) once it is
#                 built and checked: CI does, for its disk
# Targets are idempotent: stamps in the venvs rebuild only what changed.

PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
TORCH_CUDA_VERSION ?= 2.14.1
CONSTRAINTS := -c requirements/ci-constraints.txt
VENV := .venv
PY := $(VENV)/bin/python
CUDA_VENV := .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CHECK := build/wheel-check
CSRC := $(shell find csrc -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu' 2>/dev/null)
PYTEST_ARGS ?= -q
# The tests in one worker process per core (pytest-xdist): on CI's 2 cores 6 min, not 9.
# PYTEST_XDIST= runs them in this process.
PYTEST_XDIST ?= -n auto
# 1: make test builds and requires the emulated CUDA backend (docs/CUDA_EMU.md); it needs
# CUDA's headers (nvcc), not a GPU. 0: without it.
HARDLOSS_CUDA_EMU ?= 1
# The wheel checks run from here, outside the source tree.
OUTSIDE = $(shell mktemp -d)

.PHONY: all setup test bench bench-full bench-quick cmake-test emu-sanitize wheel-cpu wheel-cuda cuda-build \
        cu12-toolkit wheel-cu12 cu12-build cpu-check wheels cuda-clean cu12-clean clean

all: test

$(VENV)/.deps: requirements/ci-constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	touch $@

# The extension needs torch at build time, hence --no-build-isolation (docs/BUILDING.md).
# HARDLOSS_CUDA_EMU=1: also the emulated CUDA backend (docs/CUDA_EMU.md), for the tests only.
$(VENV)/.built: $(VENV)/.deps pyproject.toml setup.py $(CSRC)
	HARDLOSS_CUDA_EMU=$(HARDLOSS_CUDA_EMU) $(PY) -m pip install -q $(CONSTRAINTS) --no-build-isolation -e '.[test,bench,triton]'
	touch $@

setup: $(VENV)/.built

test: setup
	HARDLOSS_REQUIRE_EXTENSION=1 HARDLOSS_REQUIRE_CUDA_EMU=$(HARDLOSS_CUDA_EMU) $(PY) -m pytest tests $(PYTEST_XDIST) $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/report.py

bench-full: setup
	$(PY) benchmarks/report.py --full

bench-quick: setup
	$(PY) benchmarks/report.py --quick

# nvcc on PATH may be a wrapper script that execs the real one; CMake needs the real path.
NVCC := $(shell n=$$(command -v nvcc) && if head -c2 "$$n" | grep -q '\#!'; then sed -n 's/^exec \([^ ]*nvcc\).*/\1/p' "$$n"; else echo "$$n"; fi)

# CMAKE_CUDA_ARCHS: the architectures of the .cu compile check (CMakeLists.txt: 80;90); CI
# checks 80 here, its wheels compile every .cu for 90.
cmake-test:
	cmake -S . -B build/cmake -G Ninja $(if $(NVCC),-DCMAKE_CUDA_COMPILER=$(NVCC) -DHL_CUDA_INCLUDE_DIR=$(dir $(NVCC))../include) \
	  $(if $(CMAKE_CUDA_ARCHS),-DCMAKE_CUDA_ARCHITECTURES="$(CMAKE_CUDA_ARCHS)")
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

# The CUDA kernels on the emulator, torch-free, and the emulator's planted bugs, under
# AddressSanitizer and UBSan (docs/CUDA_EMU.md); needs CUDA's headers, no GPU.
emu-sanitize:
	cmake -S . -B build/emu-sanitize -G Ninja -DHL_SANITIZE=ON -DHL_EMU_KERNELS=ON -DHL_DEVICE_COMPILE=OFF \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
	  $(if $(NVCC),-DHL_CUDA_INCLUDE_DIR=$(dir $(NVCC))../include)
	cmake --build build/emu-sanitize -j2
	ctest --test-dir build/emu-sanitize --output-on-failure

# ---- wheels (README "Wheels") ----------------------------------------------------------
$(CUDA_VENV)/.deps:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(CUDA_PY) -m pip install -q torch==$(TORCH_CUDA_VERSION) numpy
	touch $@

wheel-cpu: $(VENV)/.deps
	HARDLOSS_SKIP_CUDA=1 scripts/build_wheel.sh $(PY) dist/cpu

wheel-cuda: $(CUDA_VENV)/.deps
	HARDLOSS_FORCE_CUDA=1 scripts/build_wheel.sh $(CUDA_PY) dist/cuda

# cuobjdump lists the GPU code of a library. The system's slim CUDA 13 kit has none; the
# assembled CUDA 12 toolkit's reads CUDA 13 libraries too (sm_100 and sm_120 included).
CUOBJDUMP = $(or $(wildcard $(dir $(NVCC))cuobjdump),$(CURDIR)/$(CU12_HOME)/bin/cuobjdump)

# A fresh venv each time: only torch and the wheel, nothing from this tree.
cuda-build: wheel-cuda cu12-toolkit
	rm -rf $(CHECK)/cuda && $(PYTHON) -m venv $(CHECK)/cuda
	$(CHECK)/cuda/bin/pip install -q torch==$(TORCH_CUDA_VERSION) numpy
	$(CHECK)/cuda/bin/pip install -q --no-deps dist/cuda/hardloss_cuda-*.whl
	cd $(OUTSIDE) && $(CURDIR)/$(CHECK)/cuda/bin/python $(CURDIR)/scripts/check_wheel.py --expect cuda \
	  --cuobjdump $(CUOBJDUMP)

# ---- the CUDA 12 wheel (docs/INSTALL.md "The CUDA 12 wheel") ---------------------------
# nvidia-cuda-toolkit from Debian trixie non-free; requirements/cuda12-toolkit.txt pins the
# nvidia-cuda-*-cu12 wheels of the same CUDA 12.4 that complete it.
CU12_TOOLKIT_DEB ?= 12.4.131~12.4.1-2
# A CUDA 12 build of torch from the package index (2.9.1 and 2.10.0 there are CUDA 12.8 builds).
CU12_TORCH_VERSION ?= 2.10.0
CU12_HOME := build/cu12/toolkit-$(subst ~,_,$(CU12_TOOLKIT_DEB))
# One venv per torch release: switching CU12_TORCH_VERSION back and forth never builds against
# the other torch.
CU12_VENV := .venv-cu12-torch$(CU12_TORCH_VERSION)
CU12_PY := $(CU12_VENV)/bin/python
# torch and its nvidia-* wheels (about 4 GB) are downloaded once into the wheelhouse; both
# venvs install from it with --no-index, so one run never downloads them twice.
CU12_WHEELHOUSE := build/cu12/wheelhouse-torch$(CU12_TORCH_VERSION)
CU12_LOCAL := --no-index --find-links $(CU12_WHEELHOUSE)
CU12_CONSTRAINTS := -c requirements/cu12-constraints.txt
# What runs against the CUDA 12 wheel: the op contract (CPU kernel, and Triton interpreted,
# against the reference), the op registration and the API; about 3 min here. CU12_TESTS=tests
# runs the whole suite (about 14 min; docs/INSTALL.md says what fails under torch 2.10).
CU12_TESTS ?= tests/test_contract.py tests/test_ops.py tests/test_api.py tests/test_version_check.py
# What runs against the installed CPU wheel: the suite but the differential fuzzes (a random
# search, which make test runs on the same kernels) and the emulated backend's own tests (a
# wheel never has it). WHEEL_TESTS=tests runs everything.
WHEEL_TESTS ?= $(sort $(filter-out tests/test_fuzz% tests/test_cuda_emu.py,$(wildcard tests/test_*.py)))

# The script keeps its own cache stamp (the .deb version and the wheel pins): cheap to rerun.
cu12-toolkit:
	scripts/cuda12_toolkit.sh '$(CU12_TOOLKIT_DEB)' $(CU12_HOME)

$(CU12_WHEELHOUSE)/.done:
	rm -rf $(@D) && mkdir -p $(@D)
	$(PYTHON) -m pip download -q --no-cache-dir --only-binary=:all: -d $(@D) torch==$(CU12_TORCH_VERSION)
	touch $@

$(CU12_VENV)/.deps: $(CU12_WHEELHOUSE)/.done
	$(PYTHON) -m venv $(CU12_VENV)
	$(CU12_PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(CU12_PY) -m pip install -q $(CU12_LOCAL) torch==$(CU12_TORCH_VERSION)
	$(CU12_PY) -m pip install -q $(CU12_CONSTRAINTS) numpy
	$(CU12_PY) -c 'import sys, torch; sys.exit(None if (torch.version.cuda or "").startswith("12.") else \
	  f"torch {torch.__version__} is not a CUDA 12 build: pick a CU12_TORCH_VERSION that is")'
	touch $@

# CUDA_HOME is the assembled toolkit; the architectures are setup.py's default for CUDA 12.
wheel-cu12: cu12-toolkit $(CU12_VENV)/.deps
	CUDA_HOME=$(CURDIR)/$(CU12_HOME) HARDLOSS_FORCE_CUDA=1 scripts/build_wheel.sh $(CU12_PY) dist/cu12

# A fresh venv: torch from the wheelhouse, the wheel, the test extras; then CU12_TESTS against
# it: the CPU kernels and the package under torch $(CU12_TORCH_VERSION), not the CUDA kernels.
cu12-build: wheel-cu12
	rm -rf $(CHECK)/cu12 && $(PYTHON) -m venv $(CHECK)/cu12
	$(CHECK)/cu12/bin/pip install -q $(CU12_LOCAL) torch==$(CU12_TORCH_VERSION)
	$(CHECK)/cu12/bin/pip install -q $(CU12_CONSTRAINTS) numpy
	$(CHECK)/cu12/bin/pip install -q --no-deps dist/cu12/hardloss_cuda-*.whl
	cd $(OUTSIDE) && $(CURDIR)/$(CHECK)/cu12/bin/python $(CURDIR)/scripts/check_wheel.py --expect cuda \
	  --cuobjdump $(CUOBJDUMP)
	$(CHECK)/cu12/bin/pip install -q $(CU12_CONSTRAINTS) "$$(ls dist/cu12/hardloss_cuda-*.whl)[test,bench,triton]"
	cd $(OUTSIDE) && HARDLOSS_REQUIRE_EXTENSION=1 HARDLOSS_EXPECT_INSTALLED=1 \
	  $(CURDIR)/$(CHECK)/cu12/bin/python -m pytest $(addprefix $(CURDIR)/,$(CU12_TESTS)) -p no:cacheprovider \
	  --import-mode=importlib $(PYTEST_XDIST) $(PYTEST_ARGS)

wheels: cuda-build cu12-build cpu-check

# Needs what cuda-build and cu12-build leave: $(CHECK)/cuda and dist/cu12.
cpu-check: wheel-cpu
	rm -rf $(CHECK)/cpu && $(PYTHON) -m venv $(CHECK)/cpu
	$(CHECK)/cpu/bin/pip install -q torch==$(TORCH_VERSION)
	$(CHECK)/cpu/bin/pip install -q $(CONSTRAINTS) "$$(ls dist/cpu/hardloss_cuda-*.whl)[test,bench,triton]"
	cd $(OUTSIDE) && $(CURDIR)/$(CHECK)/cpu/bin/python $(CURDIR)/scripts/check_wheel.py --expect cpu
	cd $(OUTSIDE) && HARDLOSS_REQUIRE_EXTENSION=1 HARDLOSS_EXPECT_INSTALLED=1 \
	  $(CURDIR)/$(CHECK)/cpu/bin/python -m pytest $(addprefix $(CURDIR)/,$(WHEEL_TESTS)) -p no:cacheprovider \
	  --import-mode=importlib $(PYTEST_XDIST) $(PYTEST_ARGS)
	# the CPU wheel (torch $(TORCH_VERSION)) under the CUDA torch must refuse to load, clearly
	$(CHECK)/cuda/bin/pip install -q --no-deps --force-reinstall dist/cpu/hardloss_cuda-*.whl
	cd $(OUTSIDE) && $(CURDIR)/$(CHECK)/cuda/bin/python $(CURDIR)/scripts/check_wheel.py --expect-mismatch
	# so must the CUDA 12 wheel (torch $(CU12_TORCH_VERSION), CUDA 12) under torch $(TORCH_CUDA_VERSION) with CUDA 13
	$(CHECK)/cuda/bin/pip install -q --no-deps --force-reinstall dist/cu12/hardloss_cuda-*.whl
	cd $(OUTSIDE) && $(CURDIR)/$(CHECK)/cuda/bin/python $(CURDIR)/scripts/check_wheel.py --expect-mismatch

# Each venv with a CUDA torch takes 5 to 8 GB; .ci/run drops them once their wheel is checked
# (docs/BUILDING.md "Disk"). What later steps need stays: the CUDA 12 toolkit (150 MB, whose
# cuobjdump cuda-build uses), $(CHECK)/cuda (cpu-check's refusals), dist/. The next make
# rebuilds what is gone.
cuda-clean:
	rm -rf $(CUDA_VENV)

cu12-clean:
	rm -rf $(CU12_VENV) $(CU12_WHEELHOUSE) $(CHECK)/cu12

clean:
	rm -rf build dist *.egg-info hardloss_cuda/_C*.so hardloss_cuda/_build_info.json
