#!/usr/bin/env bash
# Prepares build/gpu/ on this (CPU) machine for the first call on a lent GPU machine (`make gpu-prep`), so
# that no lent minute goes on downloads or compiles. scripts/gpu_check.sh runs there with build/gpu carried.
#
# The lent machine (an NVIDIA H200, sm_90) runs CPython 3.12 with torch 2.11.0+cu130 and reaches no
# network. PyPI's torch 2.11.0 is that same CUDA 13.0 build, and this machine's nvcc is 13.0, so both
# native modules are compiled here against it, in a Python 3.12 toolchain venv (build/gpu-toolchain,
# not carried), for sm_90 only:
#   build/gpu/native/   gsplat_kit._C for CPython 3.12 (portable x86-64 CPU code: the GPU machine's CPU
#                       may differ) and the sources hash it was built from
#   build/gpu/wheels/   the wheels the machine lacks (scripts/gpu_wheels.txt) and gsplat 1.5.3 with its
#                       CUDA extension compiled in (no JIT compile there)
#   build/gpu/data/     a copy of ../shared/data/cup_kwrous (the data folder beside the repo does not travel)
#   build/gpu/manifest.json   what was built against what
# Reruns are incremental: the toolchain, wheels and gsplat's build are reused; the native module is rebuilt
# by ninja only where csrc/ changed.
#
# Settings (environment): GPU_PREP_DIR (build/gpu), GPU_TORCH (2.11.0), GPU_ARCH (9.0), GPU_PY312 (a
# python3.12; found on PATH or under pyenv), MAX_JOBS (compile jobs, default: the number of cores),
# NICE (19: the compiles yield to other work on a shared machine), GPU_PREP_COMPILE=0 (compile nothing here:
# carry gsplat's sources and let gpu_check.sh build both modules on the GPU machine, minutes of its time).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUTDIR=${GPU_PREP_DIR:-build/gpu}
TOOLCHAIN=build/gpu-toolchain
SRC_COPY=build/gpu-src
GSPLAT_SRC=build/gpu-gsplat-src
GPU_TORCH=${GPU_TORCH:-2.11.0}
GPU_ARCH=${GPU_ARCH:-9.0}
GSPLAT_VERSION=1.5.3
SCENE=cup_kwrous
LIMIT_MIB=60   # of the 64 MiB that travel to the GPU machine; the working tree takes the rest
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
COMPILE=${GPU_PREP_COMPILE:-1}
NICE="nice -n ${NICE:-19}"

say() { printf '[gpu-prep] %s\n' "$*"; }
die() { printf '[gpu-prep] error: %s\n' "$*" >&2; exit 1; }

find_py312() {
    local c
    for c in "${GPU_PY312:-}" python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
        [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
            && { command -v "$c"; return 0; }
    done
    return 1
}

# ---- the toolchain: CPython 3.12 + the GPU machine's torch -----------------------------------------
PY="$TOOLCHAIN/bin/python"
if ! "$PY" -c "import torch, sys; assert torch.__version__.split('+')[0] == '$GPU_TORCH'" 2>/dev/null; then
    PY312=$(find_py312) || die "no Python 3.12 found (the GPU machine's python3 is 3.12): set GPU_PY312"
    say "toolchain: $PY312 venv in $TOOLCHAIN with torch==$GPU_TORCH (a few GB, once)"
    rm -rf "$TOOLCHAIN"
    "$PY312" -m venv "$TOOLCHAIN"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "torch==$GPU_TORCH" numpy==2.4.6 ninja==1.13.2 pybind11==3.1.0 "setuptools<82" wheel
fi
# Stand-ins for packages the GPU image already has (KINDS.md's list; its versions where it gives them), so
# that `scripts/gpu_check.sh --dry-run` here imports what the real run will import there: a wheel missing
# from scripts/gpu_wheels.txt shows up here, not in the lent minutes.
IMAGE_STANDINS=(pytest==9.2.0 scipy==1.17.1 pillow==13.0.0 imageio==2.38.1 tqdm==4.70.1 opencv-python-headless==5.0.0.93
                transformers==5.17.0 safetensors==0.8.0 huggingface-hub==1.33.0 jaxtyping==0.3.11 rich==14.3.4 requests==2.34.2)
if [ "$(cat "$TOOLCHAIN/.standins" 2>/dev/null)" != "${IMAGE_STANDINS[*]}" ]; then
    say "toolchain: the GPU image's packages for the dry run (${#IMAGE_STANDINS[@]})"
    "$PY" -m pip install -q "${IMAGE_STANDINS[@]}" 2>&1 | { grep -v "^WARNING: Location" || true; }
    echo "${IMAGE_STANDINS[*]}" > "$TOOLCHAIN/.standins"
fi
TORCH_CUDA=$("$PY" -c "import torch; print(torch.version.cuda or '')")
NVCC_CUDA=$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[ -n "$TORCH_CUDA" ] || die "torch==$GPU_TORCH from the index is a CPU-only build: nothing to compile the CUDA kernels against"
[ "$TORCH_CUDA" = "$NVCC_CUDA" ] || die "torch==$GPU_TORCH is built for CUDA $TORCH_CUDA but nvcc here is $NVCC_CUDA: \
a module built here would not match the GPU machine; let scripts/gpu_check.sh build there instead"
say "toolchain: $("$PY" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")'), nvcc $NVCC_CUDA, sm_${GPU_ARCH/./}, $MAX_JOBS jobs"
export TORCH_CUDA_ARCH_LIST=$GPU_ARCH
# torch guesses CUDA_HOME from the nvcc on PATH, a wrapper script here: name the toolkit folder itself
CUDA_HOME=$(bash scripts/gpu_cuda_home.sh) || die "no CUDA toolkit folder with bin/nvcc and the headers (set CUDA_HOME)"
export CUDA_HOME

mkdir -p "$OUTDIR/wheels" "$OUTDIR/native" "$OUTDIR/data"

# ---- wheels the machine lacks ------------------------------------------------------------------------
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
say "wheels: scripts/gpu_wheels.txt -> $OUTDIR/wheels"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$OUTDIR/wheels" -r scripts/gpu_wheels.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
# one version of each: a leftover from an older pin would stop the install there
for w in "$OUTDIR"/wheels/*.whl; do
    name=$(basename "$w" | cut -d- -f1)
    pin=$(grep -iE "^${name//_/[-_]}==" scripts/gpu_wheels.txt | sed 's/[[:space:]].*//; s/.*==//' || true)
    version=$(basename "$w" | cut -d- -f2)
    if [ -n "$pin" ] && [ "$pin" != "$version" ]; then say "wheels: removing $(basename "$w") (pinned: $pin)"; rm -f "$w"; fi
done

# ---- gsplat 1.5.3 with its CUDA extension compiled for sm_90 -----------------------------------------
GSPLAT_WHEEL=$(ls "$OUTDIR"/wheels/gsplat-$GSPLAT_VERSION-cp312-*.whl 2>/dev/null | head -1 || true)
GSPLAT_STAMP="$OUTDIR/wheels/.gsplat-built-for"
WANT_STAMP="torch $("$PY" -c 'import torch; print(torch.__version__)') sm_${GPU_ARCH/./}"
if [ -n "$GSPLAT_WHEEL" ] && [ "$(cat "$GSPLAT_STAMP" 2>/dev/null)" = "$WANT_STAMP" ]; then
    rm -f "$OUTDIR"/wheels/gsplat-*-py3-none-any.whl
    say "gsplat $GSPLAT_VERSION: $(basename "$GSPLAT_WHEEL") (built before)"
elif [ "$COMPILE" = 1 ]; then
    rm -f "$OUTDIR"/wheels/gsplat-*.whl
    # Its sdist, built in a folder that stays (build/gpu-gsplat-src): an interrupted build resumes where it
    # stopped (ninja), which matters on a busy 2-core machine
    if [ ! -f "$GSPLAT_SRC/setup.py" ]; then
        rm -rf "$GSPLAT_SRC" build/gpu-sdist
        "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d build/gpu-sdist \
            "gsplat==$GSPLAT_VERSION" 2>&1 | { grep -v "^WARNING: Location" || true; }
        mkdir -p "$GSPLAT_SRC"
        tar -xzf build/gpu-sdist/gsplat-$GSPLAT_VERSION.tar.gz -C "$GSPLAT_SRC" --strip-components=1
    fi
    say "gsplat $GSPLAT_VERSION: compiling its CUDA extension for sm_${GPU_ARCH/./} in $GSPLAT_SRC (the longest step; MAX_JOBS=$MAX_JOBS)"
    start=$(date +%s)
    # gsplat's setup.py strips the module (-s); built against the toolchain's torch
    # its compiler notes go to a log: only a failure shows them
    (cd "$GSPLAT_SRC" && $NICE "$ROOT/$PY" setup.py -q bdist_wheel -d "$ROOT/$OUTDIR/wheels" > build.log 2>&1) \
        || { tail -40 "$GSPLAT_SRC/build.log"; die "gsplat's build failed ($GSPLAT_SRC/build.log)"; }
    ls "$OUTDIR"/wheels/gsplat-$GSPLAT_VERSION-cp312-*.whl >/dev/null || die "gsplat's wheel was not built"
    echo "$WANT_STAMP" > "$GSPLAT_STAMP"
    say "gsplat $GSPLAT_VERSION: built in $(( $(date +%s) - start )) s"
else
    # its wheel from the index holds the sources; gsplat compiles them itself on first use (gpu_check.sh, there)
    rm -f "$OUTDIR"/wheels/gsplat-*.whl "$GSPLAT_STAMP"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$OUTDIR/wheels" "gsplat==$GSPLAT_VERSION" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
    say "gsplat $GSPLAT_VERSION: sources only (GPU_PREP_COMPILE=0): gpu_check.sh compiles them there"
fi

# ---- gsplat_kit._C for CPython 3.12, sm_90 only, portable CPU code -------------------------------------
# Built in a copy of the sources so that this checkout's own module (another Python, every architecture)
# is left alone; the copy keeps its object files, so ninja recompiles only what changed (tar keeps mtimes).
if [ "$COMPILE" = 1 ]; then
    say "gsplat_kit._C: building in $SRC_COPY (sm_${GPU_ARCH/./}, GSPLAT_KIT_PORTABLE=1)"
    mkdir -p "$SRC_COPY"
    rm -rf "$SRC_COPY/csrc" "$SRC_COPY/gsplat_kit" "$SRC_COPY/setup.py"
    tar -c --exclude='*.so' --exclude='__pycache__' --exclude=gsplat_kit/_build_info.json csrc gsplat_kit setup.py \
        | tar -x -C "$SRC_COPY"
    start=$(date +%s)
    (cd "$SRC_COPY" && GSPLAT_KIT_PORTABLE=1 $NICE "$ROOT/$PY" setup.py -q build_ext --inplace 2>&1 \
        | { grep -vE "^WARNING: Location|^\[[0-9]+/[0-9]+\]" || true; })
    MODULE=$(ls "$SRC_COPY"/gsplat_kit/_C.cpython-312-*.so 2>/dev/null | head -1 || true)
    [ -n "$MODULE" ] || die "gsplat_kit._C was not built in $SRC_COPY"
    rm -f "$OUTDIR"/native/_C.*.so
    cp "$MODULE" "$SRC_COPY/gsplat_kit/_build_info.json" "$OUTDIR/native/"
    strip --strip-debug "$OUTDIR/native/$(basename "$MODULE")"
    say "gsplat_kit._C: $(basename "$MODULE") in $(( $(date +%s) - start )) s"
    # The copy must load here and carry the CUDA kernels (no GPU here: nothing runs on one)
    (cd "$SRC_COPY" && "$ROOT/$PY" -c "
from gsplat_kit import _backend
assert _backend.cuda_compiled(), 'the CUDA kernels were not compiled in'
print('[gpu-prep] check:', _backend.describe())")
else
    rm -f "$OUTDIR"/native/_C.*.so "$OUTDIR"/native/_build_info.json
    say "gsplat_kit._C: not built (GPU_PREP_COMPILE=0): gpu_check.sh builds it there"
fi

# ---- a real scene for the benchmarks -------------------------------------------------------------------
DATA_SRC=${GPU_PREP_DATA:-$(dirname "$ROOT")/shared/data}/$SCENE
[ -d "$DATA_SRC/sparse/0" ] || die "$DATA_SRC/sparse/0 not found (set GPU_PREP_DATA to the folder holding $SCENE)"
rm -rf "$OUTDIR/data/$SCENE"
mkdir -p "$OUTDIR/data/$SCENE"
cp -r "$DATA_SRC/images" "$DATA_SRC/images_4" "$DATA_SRC/sparse" "$OUTDIR/data/$SCENE/"

# ---- manifest and size ---------------------------------------------------------------------------------
GLIBC_NEEDED=$( { objdump -T "$OUTDIR"/native/_C.*.so; unzip -p "$OUTDIR"/wheels/gsplat-*-cp312-*.whl 'gsplat/csrc*.so' \
    > "$OUTDIR/.gs.so" && objdump -T "$OUTDIR/.gs.so"; } 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
rm -f "$OUTDIR/.gs.so"
"$PY" - "$OUTDIR" "$GPU_ARCH" "$GLIBC_NEEDED" <<'EOF'
import glob, json, os, subprocess, sys, time, torch
out, arch, glibc = sys.argv[1:4]
info_path = os.path.join(out, "native", "_build_info.json")
info = json.load(open(info_path)) if os.path.exists(info_path) else {}
module = glob.glob(os.path.join(out, "native", "_C.*.so"))
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "csrc"], capture_output=True, text=True).stdout.strip())
manifest = {
    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": commit, "csrc_uncommitted_changes": dirty,
    "python": "%d.%d" % sys.version_info[:2], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "cuda_arch": arch, "glibc_needed": glibc or None, "sources_sha256": info.get("sources_sha256"),
    "native_module": os.path.basename(module[0]) if module else None,
    "wheels": sorted(os.path.basename(w) for w in glob.glob(os.path.join(out, "wheels", "*.whl"))),
}
tmp = os.path.join(out, "manifest.json.tmp")
with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1)
os.replace(tmp, os.path.join(out, "manifest.json"))
EOF
size_mib=$(( $(du -sb "$OUTDIR" | cut -f1) / 1048576 ))
say "$OUTDIR: ${size_mib} MiB (limit ${LIMIT_MIB} MiB)${GLIBC_NEEDED:+, modules need glibc >= ${GLIBC_NEEDED#GLIBC_}}"
du -sh "$OUTDIR"/* | sed 's/^/[gpu-prep]   /'
[ "$size_mib" -le "$LIMIT_MIB" ] || die "$OUTDIR is ${size_mib} MiB: over the ${LIMIT_MIB} MiB that can travel with the working tree"
say "done: carry $OUTDIR to the GPU machine and run 'bash scripts/gpu_check.sh' there (README: On a GPU)"
