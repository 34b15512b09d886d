#!/usr/bin/env python
"""Mutation check of the SIMT harness: shows that the harness tests can fail. Applies deliberate one-line
faults, one at a time, to a copy of the CUDA sources (the classic GPU bugs: an off-by-one pixel index, a
missing __syncthreads, a wrong shared-memory stride, a swapped gradient term, ...), rebuilds the harness
from the copy, runs the harness tests against it and reports whether they caught each fault.

    python scripts/check_simt_sensitivity.py [--faults NAME,...] [--tests PYTEST_ARGS] [--work DIR]

Exits non-zero when a fault goes uncaught, or when the tests fail on the unmutated copy (then nothing
would be shown). The copy and its build live under --work (default build/simt-mutants), so a second
run rebuilds incrementally.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (file, exact text, replacement, what it breaks). Each text must occur exactly once.
FAULTS = {
    "pixel-off-by-one": (
        "csrc/splat/rasterize.cu",
        "p.x = blockIdx.x * g.tile_size + threadIdx.x % g.tile_size;",
        "p.x = blockIdx.x * g.tile_size + threadIdx.x % g.tile_size + 1;",
        "a thread shades its right-hand neighbour's pixel",
    ),
    "missing-syncthreads-forward": (
        "csrc/splat/rasterize.cu",
        "batch[threadIdx.x] = load_splat(s.flatten_ids[k], s);\n        __syncthreads();",
        "batch[threadIdx.x] = load_splat(s.flatten_ids[k], s);",
        "threads read the shared batch before the others have written it",
    ),
    "missing-syncthreads-backward": (
        "csrc/splat/rasterize.cu",
        "        const int count = int(b1 - b0);\n        __syncthreads();",
        "        const int count = int(b1 - b0);",
        "a warp overwrites the batch while others still read the previous one",
    ),
    "shared-stride": (
        "csrc/splat/rasterize.cu",
        "return sizeof(SplatShared<T>) * size_t(threads < kBatch ? threads : kBatch);",
        "return sizeof(T) * 4 * size_t(threads < kBatch ? threads : kBatch);",
        "the shared batch is sized with the wrong element stride",
    ),
    "swapped-gradient-term": (
        "csrc/splat/rasterize.cu",
        "v_alpha += (col[d] * trans - behind[d] * ra) * v_out[d];",
        "v_alpha += (behind[d] * trans - col[d] * ra) * v_out[d];",
        "dL/dalpha with its two terms swapped",
    ),
    "half-warp-sum": (
        "csrc/splat/cuda_common.cuh",
        "for (int off = 16; off > 0; off /= 2)",
        "for (int off = 8; off > 0; off /= 2)",
        "the warp reduction misses half of the lanes",
    ),
    "early-return-before-barrier": (
        "csrc/splat/rasterize.cu",
        "    const T v_a = inside ? b.v_render_alphas[pix] : T(0);",
        "    const T v_a = inside ? b.v_render_alphas[pix] : T(0);\n    if (!inside) return;",
        "threads outside the image leave before the block's barriers",
    ),
    "tile-range-off-by-one": (
        "csrc/splat/isect.cu",
        "for (int64_t t = prev + 1; t <= cur; ++t) offsets[t] = int32_t(k);",
        "for (int64_t t = prev + 1; t <= cur; ++t) offsets[t] = int32_t(k + 1);",
        "each tile's run of intersections starts one late",
    ),
    "attention-row-offset": (
        "csrc/attention/attention.cu",
        "T* out = a.out + (bh * Q + row) * Dv;",
        "T* out = a.out + (bh * Q + row) * D;",
        "output rows at the query head dim's stride instead of the value head dim's",
    ),
    "attention-tile-barrier": (
        "csrc/attention/attention.cu",
        "        __syncthreads();  // the previous tile is consumed\n        stage_tile(p, n0, nt, KT, D, Dv, true, s);",
        "        stage_tile(p, n0, nt, KT, D, Dv, true, s);",
        "the next key tile is staged while other threads still read the last one",
    ),
    "attention-no-rescale": (
        "csrc/attention/attention.cu",
        "acc[i] = acc[i] * r + s[vj + ln.chan(i)];",
        "acc[i] = acc[i] + s[vj + ln.chan(i)];",
        "the online softmax forgets to rescale the sum when the row maximum grows",
    ),
    "attention-edit-transposed": (
        "csrc/attention/attention.cu",
        "u[(int64_t)a.edit.rows[j] * Dv] += a.edit.vals[j] * vn;",
        "u[(int64_t)n * Dv] += a.edit.vals[j] * v[(int64_t)a.edit.rows[j] * Dv];",
        "the cross edit's matrix applied transposed to the values",
    ),
    "attention-lane-sum": (
        "csrc/attention/attention.cu",
        "for (int off = G / 2; off > 0; off /= 2)",
        "for (int off = G / 2; off > 1; off /= 2)",
        "a row's score sums half of the threads that hold its channels",
    ),
    "attention-store-tile-offset": (
        "csrc/attention/attention.cu",
        "atomicAdd(st_row + n0 + j, p);",
        "atomicAdd(st_row + j, p);",
        "the map store adds every key tile to the first tile's columns",
    ),
}

# A fast subset that still reaches every kernel: the edge cases (binning, batches over 256 splats,
# empty tiles), the three tile sizes, the attention edits and the attention's multi-tile head dims.
DEFAULT_TESTS = ("tests/test_simt_kernels.py -x -q -p no:cacheprovider "
                 "-k 'test_edge_cases and RGB- or test_tile_sizes or test_attention_every_edit and replace "
                 "or test_attention_head_dims'")


def copy_tree(work: str) -> str:
    src = os.path.join(work, "src")
    for sub in ("csrc", os.path.join("gsplat_kit", "_build_hash.py")):
        dst = os.path.join(src, sub)
        if os.path.isdir(os.path.join(ROOT, sub)):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(os.path.join(ROOT, sub), dst)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, sub), dst)
    return src


def build(src: str, work: str) -> str:
    sys.path.insert(0, os.path.join(ROOT, "csrc", "simt"))
    import build as simt_build  # csrc/simt/build.py

    return simt_build.build(src, os.path.join(work, "build"), quiet=True, opt="-O1")


def run_tests(lib: str, tests: str) -> tuple[bool, str]:
    env = {**os.environ, "GSPLAT_KIT_SIMT_LIB": lib, "GSPLAT_KIT_REQUIRE_SIMT": "1", "PYTHONPATH": ROOT}
    r = subprocess.run(f"{sys.executable} -m pytest {tests}", shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return r.returncode == 0, (failed[0] if failed else lines[-1] if lines else "")[:200]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated fault names")
    ap.add_argument("--tests", default=DEFAULT_TESTS, help="pytest arguments (run from the repository root)")
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "simt-mutants"))
    a = ap.parse_args()
    names = [n for n in a.faults.split(",") if n]
    unknown = set(names) - set(FAULTS)
    if unknown:
        sys.exit(f"unknown faults: {sorted(unknown)}; known: {list(FAULTS)}")
    t_all = time.time()
    src = copy_tree(a.work)
    t0 = time.time()
    ok, why = run_tests(build(src, a.work), a.tests)
    print(f"unmutated copy: tests {'pass' if ok else 'FAIL'} ({time.time() - t0:.0f} s)", flush=True)
    if not ok:
        sys.exit(f"the harness tests fail on the unmutated sources ({why}): fix that first")
    missed = []
    for name in names:
        path, old, new, what = FAULTS[name]
        full = os.path.join(src, path)
        text = open(full).read()
        if text.count(old) != 1:
            sys.exit(f"{name}: the text to mutate occurs {text.count(old)} times in {path} (expected once); update FAULTS")
        t0 = time.time()
        try:
            with open(full, "w") as f:
                f.write(text.replace(old, new))
            passed, why = run_tests(build(src, a.work), a.tests)
        finally:
            with open(full, "w") as f:
                f.write(text)
        verdict = "missed" if passed else "caught"
        if passed:
            missed.append(name)
        print(f"{name:30s} {verdict:7s} {time.time() - t0:5.0f} s  ({what}){'' if passed else ': ' + why}", flush=True)
    build(src, a.work)  # leave the copy's build unmutated
    print(f"{len(names) - len(missed)} of {len(names)} faults caught in {time.time() - t_all:.0f} s")
    if missed:
        sys.exit(f"faults the harness tests did not catch: {', '.join(missed)}")


if __name__ == "__main__":
    main()
