#!/usr/bin/env python
"""Splat file formats: write and read time and size of a 1M-Gaussian, SH degree 3 scene in every format
gsplat_kit writes, and the 3DGS .ply through plyfile against the hand-written reader/writer it replaced
(a copy of that code lives in this script only, `_previous_*`), in one run.

The scene is built from a real capture: the SfM points of ../shared/data/cup_kwrous (their positions and
colours), each repeated with jitter of half its nearest-neighbour distance up to --num Gaussians, with
parameter spreads like a trained scene's (log-scales around -5, opacity logits around 1, higher SH bands
small and shrinking with the band). Quantised formats compress such data like real scenes' (random
numbers would not).

    python scripts/bench_formats.py [--num 1000000] [--repeats 3] [--out-dir /tmp/bench_formats]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# ---- the previous hand-written PLY code (gsplat_kit/scene/ply.py before plyfile), for comparison only ------

_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4"}


def _previous_save_ply(path, splats, fsync=False):
    from gsplat_kit.scene.ply import attribute_names

    t = {k: v.detach().cpu().float().numpy() for k, v in splats.items()}
    n = t["means"].shape[0]
    rest = t["shN"].transpose(0, 2, 1).reshape(n, -1)
    cols = [t["means"], np.zeros((n, 3), np.float32), t["sh0"].reshape(n, 3), rest, t["opacities"].reshape(n, 1),
            t["scales"], t["quats"]]
    data = np.concatenate([np.asarray(c, "<f4") for c in cols], 1)
    header = "ply\nformat binary_little_endian 1.0\nelement vertex {}\n{}end_header\n".format(
        n, "".join(f"property float {a}\n" for a in attribute_names(rest.shape[1])))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        if fsync:  # as every write does now (common.atomic), for a like-for-like comparison
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _previous_load_ply(path):
    with open(path, "rb") as f:
        assert f.readline().strip() == b"ply"
        fmt, elements, current = None, [], None
        while True:
            parts = f.readline().decode("ascii", "replace").split()
            if not parts:
                continue
            if parts[0] == "format":
                fmt = parts[1]
            elif parts[0] == "element":
                current = [parts[1], int(parts[2]), []]
                elements.append(current)
            elif parts[0] == "property":
                current[2].append((parts[2], _PLY_TYPES[parts[1]]))
            elif parts[0] == "end_header":
                break
        name, count, props = elements[0]
        dtype = np.dtype([(p, ("<" if fmt != "binary_big_endian" else ">") + t) for p, t in props])
        vertex = np.frombuffer(f.read(dtype.itemsize * count), dtype, count)
    names = vertex.dtype.names
    n_rest = sum(1 for a in names if a.startswith("f_rest_"))
    table = vertex.view("<f4").reshape(len(vertex), len(names))
    index = {a: i for i, a in enumerate(names)}
    stack = lambda attrs: table[:, [index[a] for a in attrs]]
    n = len(vertex)
    rest = stack([f"f_rest_{i}" for i in range(n_rest)])
    out = {"means": stack(["x", "y", "z"]), "scales": stack(["scale_0", "scale_1", "scale_2"]),
           "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]), "opacities": vertex["opacity"].astype(np.float32),
           "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
           "shN": rest.reshape(n, 3, n_rest // 3).transpose(0, 2, 1).copy()}
    for k, v in out.items():
        assert np.isfinite(v).all(), k
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


# ---- the scene ------------------------------------------------------------------------------------------

def scene_from_sfm(num: int, seed: int = 0) -> dict:
    from scipy.spatial import cKDTree

    from gsplat_kit.scene.colmap import read_points3D_binary
    from gsplat_kit.scene.splats import SH_C0

    pts = read_points3D_binary(os.path.join(ROOT, "..", "shared", "data", "cup_kwrous", "sparse", "0", "points3D.bin"))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(pts), num)
    nearest = cKDTree(pts.xyz).query(pts.xyz, k=2)[0][:, 1]  # each SfM point's distance to its neighbour
    means = pts.xyz[pick] + rng.normal(size=(num, 3)) * 0.5 * nearest[pick, None]
    rgb = np.clip(pts.rgb[pick] / 255.0 + rng.normal(scale=0.03, size=(num, 3)), 0, 1)
    band = np.repeat([0.08, 0.04, 0.02], [3, 5, 7])[None, :, None]  # SH bands 1-3 shrink, as in trained scenes
    params = {
        "means": means,
        "scales": rng.normal(-5.0, 0.8, (num, 3)),
        "quats": rng.normal(size=(num, 4)),
        "opacities": rng.normal(1.0, 1.5, num),
        "sh0": ((rgb - 0.5) / SH_C0)[:, None, :],
        "shN": rng.normal(size=(num, 15, 3)) * band,
    }
    return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in params.items()}


# ---- timing ---------------------------------------------------------------------------------------------

def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each write and read")
    ap.add_argument("--out-dir", default=None, help="where the files go (default: a temporary folder, removed)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (the format code is numpy, single-threaded; torch only validates)")
    args = ap.parse_args()

    from gsplat_kit.scene.formats import FORMATS, save_splats
    from gsplat_kit.scene.ply import load_ply, save_ply
    from gsplat_kit.scene.splats import load_splats

    torch.set_num_threads(args.threads)
    splats = scene_from_sfm(args.num)
    folder = args.out_dir or tempfile.mkdtemp(prefix="bench_formats_")
    os.makedirs(folder, exist_ok=True)
    rows = []
    try:
        ply = os.path.join(folder, "scene.ply")
        old = os.path.join(folder, "scene_previous.ply")
        w_new = best_seconds(lambda: save_ply(ply, splats), args.repeats)
        w_old = best_seconds(lambda: _previous_save_ply(old, splats), args.repeats)
        w_old_sync = best_seconds(lambda: _previous_save_ply(old, splats, fsync=True), args.repeats)
        assert open(ply, "rb").read() == open(old, "rb").read(), "the two writers disagree"
        r_new = best_seconds(lambda: load_ply(ply), args.repeats)
        r_old = best_seconds(lambda: _previous_load_ply(ply), args.repeats)
        a, b = load_ply(ply), _previous_load_ply(ply)
        assert all(torch.equal(a[k], b[k]) for k in a), "the two readers disagree"
        print(f"{args.num} Gaussians, SH degree 3, {os.path.getsize(ply) / 1e6:.1f} MB .ply; best of {args.repeats}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"PLY write: plyfile {w_new:.3f} s (atomic, fsync'ed), previous hand-written {w_old:.3f} s "
              f"(no fsync), previous + fsync {w_old_sync:.3f} s")
        print(f"PLY read:  plyfile {r_new:.3f} s, previous hand-written {r_old:.3f} s")
        ply_size = os.path.getsize(ply)
        variants = [(f, {}, f.suffix) for f in FORMATS.values()] + [(FORMATS["spz"], {"spz_version": 4}, ".spz v4")]
        for fmt, options, label in variants:
            path = os.path.join(folder, "scene" + fmt.suffix)
            w = best_seconds(lambda: save_splats(path, splats, fmt.name, **options), args.repeats)
            r = best_seconds(lambda: load_splats(path), args.repeats)
            size = os.path.getsize(path)
            rows.append((label, size, ply_size / size, w, r))
        print(f"\n| format | size (MB) | .ply / size | write (s) | load_splats (s) |\n|---|---|---|---|---|")
        for suffix, size, ratio, w, r in rows:
            print(f"| {suffix} | {size / 1e6:.1f} | {ratio:.1f}x | {w:.2f} | {r:.2f} |")
    finally:
        if not args.out_dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
