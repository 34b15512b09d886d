#!/usr/bin/env bash
# One call on a lent GPU machine (README: On a GPU): installs what `make gpu-prep` put in build/gpu/, makes
# the native modules available, runs every CUDA test and the GPU benchmarks, and writes under $OUT:
#   gpu_check.log   everything printed
#   summary.json    the machine, each part's status / seconds / exit code, and the CUDA tests' outcomes
#   raster.json attention.json viewer.json train.json train_gsplat.json   each benchmark's figures
# Each part runs under `timeout` within a total budget (GPU_CHECK_BUDGET_S, 450 s), so one failure or hang
# costs its own time box only; the parts run in order of what matters most.
#
#   bash scripts/gpu_check.sh              on the GPU machine (its python3: CPython 3.12, torch 2.11.0+cu130)
#   bash scripts/gpu_check.sh --dry-run    here, on the CPU: the same install and module checks with the
#                                          toolchain of `make gpu-prep` (build/gpu-toolchain), the CUDA tests
#                                          collected and skipped, each benchmark started with its real
#                                          arguments up to where it needs a GPU
# Without prebuilt modules (gpu-prep with GPU_PREP_COMPILE=0, or sources changed since), gsplat_kit._C and
# gsplat's extension are built there first with every core, for sm_90 only, and the budget grows by that time
# up to GPU_CHECK_HARD_S (560 s).
# Environment: OUT (default build/gpu-out), PYTHON (default python3), GPU_PREP_DIR (build/gpu),
# GPU_CHECK_BUDGET_S, GPU_CHECK_HARD_S, GPU_TRAIN_STEPS (steps of both training runs, 1000: five densification rounds).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DRY=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $arg (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

PREP=${GPU_PREP_DIR:-build/gpu}
OUT=${OUT:-$ROOT/build/gpu-out}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
HARD_S=${GPU_CHECK_HARD_S:-560}
TRAIN_STEPS=${GPU_TRAIN_STEPS:-1000}
ARCH=9.0
T0=$(date +%s)
if [ -z "${PYTHON:-}" ] && [ $DRY = 1 ] && [ -x build/gpu-toolchain/bin/python ]; then
    PYTHON=build/gpu-toolchain/bin/python   # CPython 3.12 + torch 2.11.0+cu130: the GPU machine's pair
fi
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
SITE=$WORK/site
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=$ARCH
mkdir -p "$OUT"
rm -f "$OUT"/{gpu_check.log,summary.json,raster.json,attention.json,viewer.json,train.json,train_gsplat.json}
: > "$WORK/parts.tsv"

say() { printf '[gpu-check] %s\n' "$*"; }

# record NAME STATUS RC SECONDS NOTE: one line of summary.json's "parts"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >> "$WORK/parts.tsv"; say "$1: $2 (exit $3, $4 s) ${5:-}"; }

# part NAME BOX_S CMD...: runs CMD under `timeout` (at most BOX_S, and never past the total budget) and
# records its outcome. In a dry run a GPU part "reaches the GPU" when it stops only for want of one.
part() {
    local name=$1 box=$2; shift 2
    local left=$(( T0 + BUDGET_S - $(date +%s) ))
    [ "$box" -gt "$left" ] && box=$left
    if [ "$box" -lt 15 ]; then record "$name" skipped - 0 "no time left in the ${BUDGET_S} s budget"; return; fi
    say "=== $name (time box ${box} s): $*"
    local start=$(date +%s) rc status
    timeout -k 10 "$box" "$@" 2>&1 | tee "$WORK/$name.out"
    rc=${PIPESTATUS[0]}
    local secs=$(( $(date +%s) - start ))
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    if [ $DRY = 1 ] && [ "$rc" != 0 ] && [ "${GPU_PART:-0}" = 1 ]; then
        if grep -qE "usage:|unrecognized arguments|ModuleNotFoundError|ImportError|No such file|not found|NativeBuildError" "$WORK/$name.out"; then
            status=failed
        elif grep -qiE "no CUDA GPU|no CUDA device|NVIDIA driver|CUDA is not available|cuda.*not available|no GPU" "$WORK/$name.out"; then
            status=reached-gpu
        fi
    fi
    record "$name" "$status" "$rc" "$secs"
}

gpu_part() { GPU_PART=1 part "$@"; }
last_ok() { [ "$(tail -1 "$WORK/parts.tsv" | cut -f2)" = ok ]; }

main() {
    say "$(date -u '+%Y-%m-%d %H:%M UTC'); $( [ $DRY = 1 ] && echo 'DRY RUN (CPU only); ')python: $PY; out: $OUT; budget ${BUDGET_S} s"
    [ -f "$PREP/manifest.json" ] || say "warning: $PREP/manifest.json missing: run 'make gpu-prep' here and carry $PREP"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda,
'| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none', '| cores', __import__('os').cpu_count())"

    # ---- wheels the image lacks (and gsplat with its compiled extension) into a --target folder ----------
    local start=$(date +%s)
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$PREP"/wheels/*.whl; then
        record install ok 0 $(( $(date +%s) - start )) "$(ls "$PREP"/wheels/*.whl | wc -l) wheels"
    else
        record install failed 1 $(( $(date +%s) - start ))
    fi
    export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
    CUDA_HOME=$(bash scripts/gpu_cuda_home.sh) && export CUDA_HOME

    # ---- gsplat_kit._C: the module built by gpu-prep when it matches these sources and this torch, else built here
    native_module
    # ---- gsplat 1.5.3: its prebuilt extension, or (none carried, or it does not load) gsplat's own JIT build
    # of the sources in its wheel, for sm_90 with every core, time-boxed
    if [ $DRY = 1 ] && ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('gsplat.csrc') is None)"; then
        # no prebuilt extension: gsplat's JIT build is for the GPU machine's 16 cores, not this one's
        GPU_PART=0 part gsplat_module 60 "$PY" -c "import gsplat; print('gsplat', gsplat.__version__, '(sources only: compiled there)')"
    else GPU_PART=0 part gsplat_module 300 "$PY" -c "
import time; t = time.time()
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat has no CUDA extension (no prebuilt module, and no nvcc for its JIT build)'
import gsplat; print('gsplat', gsplat.__version__, 'extension', _C.__file__, 'in %.1f s' % (time.time() - t))"
    fi

    # Builds done here (no matching prebuilt module) eat into the budget: the parts get that time back, up
    # to HARD_S in all (a device call may run 600 s)
    local setup_s=$(( $(date +%s) - T0 ))
    if [ "$setup_s" -gt 60 ]; then
        BUDGET_S=$(( BUDGET_S + setup_s - 60 )); [ "$BUDGET_S" -gt "$HARD_S" ] && BUDGET_S=$HARD_S
        say "setup took ${setup_s} s: the budget is now ${BUDGET_S} s"
    fi

    # ---- the CUDA tests: on the GPU (the SIMT-harness variants run in CI, not here) -----------------------
    # only the files that hold CUDA tests: a module that needs a package the image lacks (pycolmap, chromium)
    # must not stop the collection
    GPU_PART=0 part tests_cuda 150 "$PY" -m pytest -m "cuda and not simt" -p no:cacheprovider -q -rs \
        --junitxml="$WORK/tests_cuda.xml" $(grep -l "pytest.mark.cuda" tests/test_*.py)
    # ---- benchmarks ----------------------------------------------------------------------------------------
    gpu_part bench_raster 120 "$PY" scripts/bench_raster.py --device cuda --data "$PREP/data/cup_kwrous" \
        --json "$OUT/raster.json"
    gpu_part bench_attention 60 "$PY" scripts/bench_attention.py --device cuda --plain --json "$OUT/attention.json"
    gpu_part bench_viewer 90 "$PY" scripts/bench_viewer.py --devices cuda --json "$OUT/viewer.json"
    gpu_part bench_train 120 "$PY" scripts/bench_train.py --device cuda --scenes cup_kwrous --data-root "$PREP/data" \
        --data-factor 1 --steps "$TRAIN_STEPS" --out "$WORK/bench_train" --no-progress
    last_ok && cp "$WORK/bench_train/results.json" "$OUT/train.json"
    gpu_part bench_train_gsplat 120 "$PY" scripts/bench_train_gsplat.py --device cuda --data "$PREP/data/cup_kwrous" \
        --data-factor 1 --steps "$TRAIN_STEPS" --json "$OUT/train_gsplat.json"
    # ---- tests whose code takes the GPU when one is visible (the trainer's device "auto") ----------------
    [ $DRY = 1 ] || GPU_PART=0 part tests_trainer_auto_device 90 "$PY" -m pytest -p no:cacheprovider -q -x \
        --junitxml="$WORK/tests_trainer.xml" tests/test_train_trainer.py

    summary
}

native_module() {
    local ext start=$(date +%s) torch_now torch_built
    ext=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
    torch_now=$("$PY" -c "import torch; print(torch.__version__)")
    torch_built=$("$PY" -c "import json; print(json.load(open('$PREP/manifest.json'))['torch'])" 2>/dev/null)
    if [ $DRY = 1 ]; then   # leave this checkout's own build as it was
        [ -f gsplat_kit/_build_info.json ] && cp gsplat_kit/_build_info.json "$WORK/build_info.saved"
        trap 'rm -f "gsplat_kit/_C'"$ext"'"; [ -f "'"$WORK"'/build_info.saved" ] && cp "'"$WORK"'/build_info.saved" gsplat_kit/_build_info.json' EXIT
    fi
    # _backend.load() refuses a module built from other sources than these (csrc/ changed after gpu-prep)
    if [ -f "$PREP/native/_C$ext" ] && [ "$torch_built" = "$torch_now" ]; then
        cp "$PREP/native/_C$ext" "gsplat_kit/_C$ext" && cp "$PREP/native/_build_info.json" gsplat_kit/_build_info.json
        if "$PY" -c "from gsplat_kit import _backend; _backend.load()"; then
            record native_module ok 0 $(( $(date +%s) - start )) "prebuilt by gpu-prep (torch $torch_built)"
            native_report
            return
        fi
        say "the prebuilt gsplat_kit._C does not load or is stale"
    else
        say "no prebuilt gsplat_kit._C$ext for torch $torch_now (gpu-prep: ${torch_built:-none})"
    fi
    rm -f "gsplat_kit/_C$ext"
    if [ $DRY = 1 ]; then   # 2 cores: that build is `make gpu-prep`'s, not the dry run's
        record native_module failed 1 $(( $(date +%s) - start )) "no prebuilt module for this Python: run make gpu-prep first"
        return
    fi
    GPU_PART=0 GSPLAT_KIT_PORTABLE=1 part native_build 300 "$PY" setup.py -q build_ext --inplace
    if "$PY" -c "from gsplat_kit import _backend; _backend.load()"; then
        record native_module ok 0 $(( $(date +%s) - start )) "built here for sm_${ARCH/./}"
        native_report
    else
        record native_module failed 1 $(( $(date +%s) - start ))
    fi
}

native_report() {
    "$PY" -c "from gsplat_kit import _backend; print(_backend.describe())
assert _backend.cuda_compiled(), 'gsplat_kit._C has no CUDA kernels'" || record native_cuda_kernels failed 1 0
    # the module's CPU code (portable x86-64, this machine's CPU) against the PyTorch reference
    "$PY" -c "
import torch
from gsplat_kit import rasterization
from gsplat_kit.render.reference import rasterization_reference
g = torch.Generator().manual_seed(0)
n = 200
scene = dict(means=torch.randn(n, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, 3.0]), quats=torch.randn(n, 4, generator=g),
             scales=torch.rand(n, 3, generator=g) * 0.1 + 0.02, opacities=torch.rand(n, generator=g),
             colors=torch.rand(n, 3, generator=g), viewmats=torch.eye(4)[None],
             Ks=torch.tensor([[[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]]), width=64, height=48)
err = (rasterization(**scene)[0] - rasterization_reference(**scene)[0]).abs().max().item()
print(f'CPU kernels vs the PyTorch reference on 200 Gaussians: max |diff| {err:.1e}')
assert err < 1e-4, err" || record native_cpu_kernels failed 1 0
    # the GPU code in the module: sm_90 machine code expected (cuobjdump is on the GPU machine)
    command -v cuobjdump >/dev/null && cuobjdump --list-elf gsplat_kit/_C*.so 2>&1 | sed 's/^/  /' | sort -u | head -8
}

summary() {
    "$PY" - "$WORK" "$OUT" "$DRY" "$BUDGET_S" "$T0" "$PREP" <<'EOF'
import json, os, sys, time
import xml.etree.ElementTree as ET

work, out, dry, budget, t0, prep = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
parts = []
for line in open(os.path.join(work, "parts.tsv")):
    name, status, rc, secs, note = line.rstrip("\n").split("\t")
    parts.append({"part": name, "status": status, "exit": rc, "seconds": int(secs), "note": note})

def junit(path):
    if not os.path.exists(path):
        return None
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome, message = {"failure": "failed"}.get(tag, tag), (el.get("message") or "")[:300]
        cases.append({"test": f"{tc.get('classname')}::{tc.get('name')}", "outcome": outcome,
                      "seconds": round(float(tc.get("time") or 0), 2), "message": message})
    counts = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    return {"counts": counts, "cases": cases}

env = {"cores": os.cpu_count()}
try:
    import torch
    env.update(torch=torch.__version__, cuda=torch.version.cuda,
               gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
except Exception as e:  # the summary is written whatever broke
    env["torch_error"] = repr(e)
manifest = os.path.join(prep, "manifest.json")
summary = {"dry_run": dry, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": int(time.time()) - t0,
           "budget_s": budget, "machine": env,
           "prep": json.load(open(manifest)) if os.path.exists(manifest) else None, "parts": parts,
           "tests_cuda": junit(os.path.join(work, "tests_cuda.xml")),
           "tests_trainer_auto_device": junit(os.path.join(work, "tests_trainer.xml")),
           "figures": sorted(f for f in os.listdir(out) if f.endswith(".json") and f != "summary.json")}
tmp = os.path.join(out, "summary.json.tmp")
with open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
os.replace(tmp, os.path.join(out, "summary.json"))
print(f"\n{'part':<28}{'status':<13}{'exit':>5}{'s':>6}  note")
for p in parts:
    print(f"{p['part']:<28}{p['status']:<13}{p['exit']:>5}{p['seconds']:>6}  {p['note']}")
for key in ("tests_cuda", "tests_trainer_auto_device"):
    if summary[key]:
        print(f"{key}: {summary[key]['counts']}")
print(f"total {summary['seconds']} s; figures: {', '.join(summary['figures']) or 'none'}; summary: {out}/summary.json")
sys.exit(1 if any(p["status"] in ("failed", "timeout") for p in parts) else 0)
EOF
}

main 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
