#!/usr/bin/env python
"""The README's main job (`make demo`): reconstruct the embedded scene end to end on the CPU.

    photos (data/demo_scene/images) -> SfM (gsplat_kit.sfm: pycolmap features, matching, mapping)
    -> 3D Gaussians trained from the SfM points -> held-out PSNR (every 8th photo never seen in training)

Writes runs/demo/sfm (COLMAP model), runs/demo/train (point_cloud.ply, metrics.json, eval/ renders
beside the ground truth) and runs/demo/orbit.mp4. A few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# idle OpenMP threads sleep instead of spinning (several times faster on a CPU shared with other jobs);
# set before torch is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _images_stamp(folder: str) -> list:
    """Names, sizes and modification times of the photos: SfM is redone when they change."""
    return sorted([n, os.path.getsize(os.path.join(folder, n)), int(os.path.getmtime(os.path.join(folder, n)))]
                  for n in os.listdir(folder) if not n.startswith("."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=os.path.join(ROOT, "data", "demo_scene", "images"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--steps", type=int, default=1000, help="training steps (3DGS uses 30000 on a GPU)")
    p.add_argument("--redo-sfm", action="store_true", help="run SfM again even if the photos did not change")
    p.add_argument("--no-video", action="store_true")
    args = p.parse_args(argv)
    if not os.path.isdir(args.images):
        print(f"error: {args.images}: no such folder (the embedded demo scene)", file=sys.stderr)
        return 2

    from gsplat_kit.common.atomic import write_json
    from gsplat_kit.common.run_folder import RunFolder
    from gsplat_kit.sfm import run_sfm
    from gsplat_kit.train.config import TrainConfig
    from gsplat_kit.train.trainer import Trainer

    t0 = time.perf_counter()
    sfm_dir = os.path.join(args.out, "sfm")
    stamp_path = os.path.join(sfm_dir, "demo_images.json")
    stamp = _images_stamp(args.images)
    fresh = os.path.isdir(os.path.join(sfm_dir, "sparse", "0")) and os.path.isfile(stamp_path) and \
        json.load(open(stamp_path)) == stamp
    if args.redo_sfm or not fresh:
        print(f"[1/3] SfM on {args.images}", flush=True)
        run_sfm(args.images, sfm_dir)   # prints its own progress and summary
        write_json(stamp_path, stamp)
    else:
        print(f"[1/3] SfM: reusing {sfm_dir} (--redo-sfm to run it again)", flush=True)
    t_sfm = time.perf_counter() - t0

    print(f"[2/3] training {args.steps} steps on the CPU", flush=True)
    # A short run: densify from step 100 (3DGS: 500) every 100 steps until 80% of the run, so the last
    # fifth refines the final set; no opacity reset (3DGS resets every 3000 steps, beyond this run).
    opts = dict(refine_start_iter=100, refine_every=100, refine_stop_iter=int(0.8 * args.steps))
    cfg = TrainConfig(data=sfm_dir, out=os.path.join(args.out, "train"), steps=args.steps, device="auto",
                      ckpt_every=500, strategy_options=opts)
    # the demo's own folder: each run replaces the previous one (when it finishes)
    trainer = Trainer(cfg, run=RunFolder.claim(cfg.out, "train", overwrite=True))
    m = trainer.train()

    if not args.no_video:
        print("[3/3] orbit video", flush=True)
        from gsplat_kit.train.video import render_video

        render_video(trainer._eval_splats(), trainer.scene.train_views, os.path.join(args.out, "orbit.mp4"),
                     n_frames=90, fps=30, background=trainer.background)
    total = time.perf_counter() - t0
    print(f"\nSfM {t_sfm:.0f} s, training {m['train_time_s']:.0f} s ({m['steps_per_s']:.1f} steps/s), total {total:.0f} s; "
          f"{m['num_gaussians']} Gaussians")
    print(f"held-out PSNR: {m['psnr']:.2f} dB (SSIM {m['ssim']:.3f}) on {m['num_test_views']} views never seen in training")
    print(f"outputs: {cfg.out}/point_cloud.ply, {cfg.out}/metrics.json, {cfg.out}/eval/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
