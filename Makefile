# Every target does the setup it needs: `make demo` and `make test` work on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
DEPS    := $(VENV)/.deps-stamp
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py
BUILT   := gsplat_kit/_build_info.json
PYTEST_ARGS ?=

.PHONY: setup build demo test test-isa simt test-simt-asan bench clean browser

setup: build

# torch==2.14.1 is the CUDA 13 build that pip takes from the local wheel cache; the rest is pinned.
$(DEPS): requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.txt
	GSPLAT_KIT_SKIP_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# The native module is built in place (ninja, incremental); flock serialises concurrent builds.
$(BUILT): $(DEPS) $(SOURCES)
	flock .build.lock $(PY) setup.py -q build_ext --inplace
	$(PY) -c "import gsplat_kit._backend as b; print(b.describe())"

build: $(BUILT)

# Headless Chromium for the viewer's browser tests (Debian package).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

demo: build
	$(PY) scripts/demo.py

# CI: every test, the CUDA kernels included through the SIMT harness (GSPLAT_KIT_REQUIRE_SIMT: a missing
# or stale harness fails instead of skipping; the summary line counts the harness-executed tests), then
# the harness under AddressSanitizer, then the CPU kernels in the other instruction sets this CPU runs.
test: build browser simt
	GSPLAT_KIT_REQUIRE_SIMT=1 $(PY) -m pytest -q tests $(PYTEST_ARGS)
	$(MAKE) test-simt-asan
	$(MAKE) test-isa

# The SIMT harness (csrc/simt/): the .cu kernels compiled as C++ and executed on the CPU by the tests.
# A separate, test-only library (build/simt/gsplat_kit_simt.so); the real build never compiles it.
simt: build
	$(PY) csrc/simt/build.py --quiet

# The harness built with AddressSanitizer: an out-of-bounds access in a kernel fails the run. Python is
# not instrumented, so libasan is preloaded, and libstdc++ with it (else ASan's exception interceptor
# finds no __cxa_throw and the harness's errors abort); leak checking is off (CPython and torch keep
# their allocations to exit). A subset of the harness tests keeps it to a few minutes.
ASAN_PRELOAD = $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libstdc++.so)
SIMT_ASAN_TESTS ?= tests/test_simt_runtime.py tests/test_simt_kernels.py
SIMT_ASAN_SELECT ?= not float64 and not covars
test-simt-asan: build
	$(PY) csrc/simt/build.py --asan --quiet
	LD_PRELOAD="$(ASAN_PRELOAD)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_odr_violation=0 \
		GSPLAT_KIT_SIMT_LIB=build/simt-asan/gsplat_kit_simt.so GSPLAT_KIT_REQUIRE_SIMT=1 \
		$(PY) -m pytest -q -p no:cacheprovider $(SIMT_ASAN_TESTS) -k "$(SIMT_ASAN_SELECT)"

# The CPU kernel tests once more for each instruction set this CPU runs besides the best one, which the
# main run used: the module holds the SIMD loops for AVX-512, AVX2 and SSE2 (csrc/cpu_isa.h) and
# GSPLAT_KIT_ISA picks one. (The harness, CUDA and float64 cases do not depend on it.)
ISA_TESTS ?= tests/test_render_rasterization.py tests/test_edit_kernel.py tests/test_train_losses.py
ISA_SELECT ?= not simt and not cuda and not float64
test-isa: build
	@for isa in $$($(PY) -c "import gsplat_kit._backend as b; print(*b.cpu_isa_choices()[1:])"); do \
		echo "== CPU kernels with GSPLAT_KIT_ISA=$$isa"; \
		GSPLAT_KIT_ISA=$$isa $(PY) -m pytest -q -p no:cacheprovider $(ISA_TESTS) -k "$(ISA_SELECT)" || exit 1; \
	done

# The GPU when one is visible (`make bench BENCH_DEVICE=cpu` for the CPU kernels there); the viewer
# benchmark measures every device it finds.
BENCH_DEVICE = $(shell $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

bench: build
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) scripts/bench_raster.py --device $(BENCH_DEVICE) $(BENCH_ARGS)
	$(PY) scripts/bench_viewer.py
	$(PY) scripts/bench_sfm.py
	$(PY) scripts/bench_train.py --device $(BENCH_DEVICE) $(BENCH_TRAIN_ARGS)
	$(PY) scripts/bench_loss.py
	$(PY) scripts/bench_attention.py --plain --device $(BENCH_DEVICE)
	$(PY) scripts/bench_synth.py --device $(BENCH_DEVICE)

clean:
	rm -rf build gsplat_kit/_C*.so $(BUILT)

# For the first call on a lent GPU machine (README: On a GPU): build/gpu/ holds the wheels that machine
# lacks, gsplat 1.5.3 and gsplat_kit._C compiled for its Python 3.12 / torch 2.11.0+cu130 / sm_90, and a
# scene; carried there, `bash scripts/gpu_check.sh` installs them and runs the CUDA tests and benchmarks.
.PHONY: gpu-prep gpu-check-dry-run
gpu-prep:
	bash scripts/gpu_prep.sh

gpu-check-dry-run: gpu-prep
	bash scripts/gpu_check.sh --dry-run
