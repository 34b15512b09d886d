#!/usr/bin/env python
"""SfM benchmark: time per stage, registered images, points, reprojection error and camera-centre error
against the known cameras, on the embedded demo scene and Strecha fountain-P11 (../shared/data).

    .venv/bin/python scripts/bench_sfm.py [--threads -1] [--out runs/bench_sfm]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=-1)
    p.add_argument("--out", default=None, help="where the models go (default: a temporary folder)")
    args = p.parse_args(argv)
    from gsplat_kit.scene import read_model
    from gsplat_kit.sfm import align_centres, json_centres, model_centres, run_sfm, strecha_centres

    fountain = os.path.join(ROOT, "..", "shared", "data", "strecha_fountain_p11")
    demo = os.path.join(ROOT, "data", "demo_scene")
    demo_gt = json_centres(os.path.join(demo, "cameras_gt.json"))
    cases = [("demo_scene (30 x 256x192)", os.path.join(demo, "images"), demo_gt, "exhaustive"),
             ("demo_scene sequential", os.path.join(demo, "images"), demo_gt, "sequential")]
    if os.path.isdir(fountain):
        cases.append(("fountain-P11 images_25 (11 x 768x512)", os.path.join(fountain, "images_25"),
                      strecha_centres(fountain), "exhaustive"))
    base = args.out or tempfile.mkdtemp(prefix="bench_sfm_")
    rows = []
    for i, (name, images, gt, matcher) in enumerate(cases):
        out = os.path.join(base, str(i))
        s = run_sfm(images, out, matcher=matcher, num_threads=args.threads)
        est = model_centres(read_model(os.path.join(out, "sparse", "0")))
        names = sorted(set(gt) & set(est))
        r = align_centres(np.stack([est[n] for n in names]), np.stack([gt[n] for n in names]))
        rows.append((name, matcher, s, r))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads={args.threads}")
    print("| scene | matcher | registered | points | reproj. err (px) | features s | matching s | mapping s | "
          "undistort s | total s | centre err max / mean (% of extent) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, matcher, s, r in rows:
        print(f"| {name} | {matcher} | {s['num_registered']}/{s['num_images']} | {s['num_points']} | "
              f"{s['mean_reprojection_error']:.3f} | {s['features_s']:.1f} | {s['matching_s']:.1f} | "
              f"{s['mapping_s']:.1f} | {s['undistort_s']:.1f} | {s['total_s']:.1f} | "
              f"{r['max_error']:.4f} / {r['mean_error']:.4f} ({100 * r['max_error'] / r['extent']:.2f} %) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
