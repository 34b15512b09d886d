#!/usr/bin/env python
"""Training benchmark: on each real scene in ../shared/data, train for a fixed number of steps and report
held-out PSNR / SSIM / LPIPS, wall time, steps per second, peak memory and the Gaussian count.

    .venv/bin/python scripts/bench_train.py --steps 1000                    # every scene
    .venv/bin/python scripts/bench_train.py --scenes cup_kwrous --steps 3000 --strategy mcmc

Each scene trains into runs/bench_train/<scene>/ (config.json, metrics.json, eval/ renders); a markdown
table is printed at the end (and written to runs/bench_train/results.md). The comparison with gsplat
1.5.3's own training at equal steps needs a CUDA GPU (gsplat has no CPU path) and is not part of this script.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# idle OpenMP threads sleep instead of spinning (several times faster on a CPU shared with other jobs);
# set before torch is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

# scene -> (folder, data_factor, white_background): factors keep every scene near 200 px wide on the CPU
SCENES = {
    "cup_kwrous": ("cup_kwrous", 4, False),            # images_4/: 200x150
    "statue_bartoszek": ("statue_bartoszek", 4, False),  # ~250x165
    "nerf_synthetic_lego": ("nerf_synthetic_lego", 4, True),  # 200x200, white background
    "instant_ngp_fox": ("instant_ngp_fox", 8, False),  # 135x240, OPENCV distortion undistorted by the loader
}


def bench_scene(name: str, args) -> dict:
    import torch

    from gsplat_kit.common.run_folder import RunFolder
    from gsplat_kit.scene import load_scene
    from gsplat_kit.train.config import TrainConfig
    from gsplat_kit.train.trainer import Trainer

    folder, factor, white = SCENES[name]
    path = os.path.join(args.data_root, folder)
    t0 = time.perf_counter()
    scene = load_scene(path, data_factor=args.data_factor or factor, test_every=8, white_background=white)
    t_load = time.perf_counter() - t0
    opts = {}
    if args.refine_every:
        opts.update(refine_start_iter=args.refine_start, refine_every=args.refine_every)
    if args.strategy == "mcmc" and args.cap_max:
        opts["cap_max"] = args.cap_max
    cfg = TrainConfig(data=path, out=os.path.join(args.out, name), steps=args.steps, strategy=args.strategy,
                      strategy_options=opts, ckpt_every=0, device=args.device, progress=not args.no_progress,
                      data_factor=args.data_factor or factor, white_background=white, seed=args.seed)
    t0 = time.perf_counter()
    # a benchmark rerun replaces the previous figures of its scene
    m = Trainer(cfg, scene=scene, run=RunFolder.claim(cfg.out, "train", overwrite=True)).train()
    wall = time.perf_counter() - t0
    v = scene.train_views[0]
    return {"scene": name, "resolution": f"{v.width}x{v.height}", "train_views": len(scene.train_views),
            "test_views": len(scene.test_views), "init_points": int(len(scene.points)), "steps": args.steps,
            "strategy": args.strategy, "psnr": m["psnr"], "ssim": m["ssim"], "lpips": m["lpips"],
            "num_gaussians": m["num_gaussians"], "train_time_s": m["train_time_s"], "steps_per_s": m["steps_per_s"],
            "wall_s": round(wall + t_load, 1), "peak_memory_mb": m["peak_memory_mb"], "device": m["device"],
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", nargs="*", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--strategy", choices=["default", "mcmc"], default="default")
    p.add_argument("--cap-max", type=int, default=None)
    p.add_argument("--refine-start", type=int, default=500, help="with --refine-every: first densification step")
    p.add_argument("--refine-every", type=int, default=0, help="override the strategy's refine_every (0: keep)")
    p.add_argument("--data-factor", type=int, default=None, help="override every scene's downscale factor")
    p.add_argument("--data-root", default=DATA)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_train"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    rows = []
    for name in args.scenes:
        if not os.path.isdir(os.path.join(args.data_root, SCENES[name][0])):
            print(f"skip {name}: {os.path.join(args.data_root, SCENES[name][0])} not found", file=sys.stderr)
            continue
        print(f"== {name}", flush=True)
        try:
            r = bench_scene(name, args)
        except Exception as e:  # one unreadable scene must not hide the others' figures
            print(f"{name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append({"scene": name, "error": f"{type(e).__name__}: {e}"})
            continue
        print(json.dumps(r), flush=True)
        rows.append(r)

    head = "| scene | res | views train/test | steps | strategy | PSNR | SSIM | LPIPS | Gaussians | train s | steps/s | peak MB |"
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scene']} | failed: {r['error']} |")
            continue
        lp = f"{r['lpips']:.3f}" if r["lpips"] is not None else "n/a"
        lines.append(f"| {r['scene']} | {r['resolution']} | {r['train_views']}/{r['test_views']} | {r['steps']} | "
                     f"{r['strategy']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {lp} | {r['num_gaussians']} | "
                     f"{r['train_time_s']:.0f} | {r['steps_per_s']:.2f} | {r['peak_memory_mb']:.0f} |")
    text = "\n".join(lines)
    print(text)
    from gsplat_kit.common.atomic import write_json, write_text

    write_text(os.path.join(args.out, "results.md"), text + "\n")
    write_json(os.path.join(args.out, "results.json"), rows)
    return 0 if rows and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
