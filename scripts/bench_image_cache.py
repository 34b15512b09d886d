#!/usr/bin/env python
"""Image-cache build time: a COLMAP scene read at `--factor` from its full-size images/ (its images_N/
hidden), so every image is decoded, downscaled and written to a fresh cache; then read again from the
warm cache.

    .venv/bin/python scripts/bench_image_cache.py [--scene ../shared/data/cup_kwrous] [--factor 4] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _scene_without_scaled(src: str, dst: str):
    """images/ and sparse/ linked into `dst`, so the loader must build images_N itself."""
    os.makedirs(dst)
    for sub in ("images", "sparse"):
        os.symlink(os.path.join(os.path.abspath(src), sub), os.path.join(dst, sub))


def _load_all(scene_dir: str, factor: int) -> tuple[float, int]:
    from gsplat_kit.scene import load_scene

    t = time.perf_counter()
    scene = load_scene(scene_dir, data_factor=factor, test_every=0)
    for v in scene.views:
        v.load_image()
    return time.perf_counter() - t, len(scene.views)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default=os.path.join(ROOT, "..", "shared", "data", "cup_kwrous"))
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3, help="cold builds (each into a fresh cache); the best is kept")
    args = p.parse_args(argv)
    cold, warm = [], []
    for _ in range(args.repeat):
        tmp = tempfile.mkdtemp(prefix="bench_image_cache_")
        try:
            os.environ["GSPLAT_KIT_CACHE"] = os.path.join(tmp, "cache")
            scene_dir = os.path.join(tmp, "scene")
            _scene_without_scaled(args.scene, scene_dir)
            t, n = _load_all(scene_dir, args.factor)
            cold.append(t)
            warm.append(_load_all(scene_dir, args.factor)[0])
        finally:
            shutil.rmtree(tmp)
    print(f"{os.path.basename(os.path.abspath(args.scene))}: {n} images at factor {args.factor} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cpus)")
    print(f"cache build (decode + downscale + write + read back), best of {args.repeat}: {min(cold):.2f} s "
          f"({1000 * min(cold) / n:.1f} ms/image)")
    print(f"warm cache (decode the cached images), best of {args.repeat}: {min(warm):.2f} s "
          f"({1000 * min(warm) / n:.1f} ms/image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
