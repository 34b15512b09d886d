#!/usr/bin/env python
"""gsplat 1.5.3's training recipe at equal steps, beside scripts/bench_train.py: the loop of gsplat's
examples/simple_trainer.py (its default settings) on gsplat's own library parts.

    python scripts/bench_train_gsplat.py --data DIR --steps 2000 --device cuda          # gsplat's CUDA kernels
    python scripts/bench_train_gsplat.py --data DIR --steps 30 --rasterizer gsplat_kit  # the loop on the CPU

simple_trainer itself is not in gsplat's wheel and needs packages of its own (tyro, nerfview, fused-ssim,
pycolmap), so its loop is restated here: gsplat.rasterization, gsplat.strategy.DefaultStrategy (3DGS
densification at gsplat's defaults), one Adam per attribute at simple_trainer's rates (the means' rate times
the scene scale, decayed to 1/100 over the run), loss 0.8 L1 + 0.2 (1 - SSIM), one SH band more every 1000
steps, black background. The scene, its train/test split (every 8th view held out), the initial Gaussians and
the SSIM are gsplat_kit's, the same as bench_train.py's, so the two runs differ in their rasteriser, their
densification code and their loop only. --rasterizer gsplat_kit swaps in gsplat_kit.rasterization (the same
call) so the loop itself can be checked on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

LRS = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a COLMAP scene folder (images*/ + sparse/0)")
    p.add_argument("--data-factor", type=int, default=1)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--device", default="cuda")
    p.add_argument("--rasterizer", choices=["gsplat", "gsplat_kit"], default="gsplat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    from gsplat.strategy import DefaultStrategy

    from gsplat_kit.scene import load_scene
    from gsplat_kit.train.evaluation import load_image_tensor
    from gsplat_kit.train.init import init_splats
    from gsplat_kit.train.losses import ssim
    from gsplat_kit.train.metrics import image_metrics

    if args.rasterizer == "gsplat":
        from gsplat import rasterization
    else:
        from gsplat_kit import rasterization
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    scene = load_scene(args.data, data_factor=args.data_factor, test_every=8)
    params = torch.nn.ParameterDict(init_splats(scene.points, scene.points_rgb, 3, device=dev))
    scale = float(scene.scene_scale)
    optimizers = {k: torch.optim.Adam([{"params": [params[k]], "lr": lr * (scale if k == "means" else 1), "name": k}],
                                      eps=1e-15) for k, lr in LRS.items()}
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"], gamma=0.01 ** (1.0 / args.steps))
    strategy = DefaultStrategy(verbose=False)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scale)
    views = scene.train_views
    images = [load_image_tensor(v).to(dev) for v in views]       # preloaded: the loop times training only
    cams = [(torch.as_tensor(v.viewmat, dtype=torch.float32, device=dev)[None],
             torch.as_tensor(v.K, dtype=torch.float32, device=dev)[None]) for v in views]

    def render(i_view, view_list, cam_list, sh_degree):
        v, (viewmat, K) = view_list[i_view], cam_list[i_view]
        colors = torch.cat([params["sh0"], params["shN"]], 1)
        return rasterization(params["means"], params["quats"], torch.exp(params["scales"]),
                             torch.sigmoid(params["opacities"]), colors, viewmat, K, v.width, v.height,
                             sh_degree=sh_degree)

    g = np.random.default_rng(args.seed)
    order: list[int] = []
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for step in range(args.steps):
        if not order:
            order = list(g.permutation(len(views)))
        i = int(order.pop())
        rgb, _, info = render(i, views, cams, min(step // 1000, 3))
        strategy.step_pre_backward(params, optimizers, state, step, info)
        pred, gt = rgb[0].permute(2, 0, 1)[None], images[i].permute(2, 0, 1)[None]
        loss = 0.8 * (pred - gt).abs().mean() + 0.2 * (1.0 - ssim(pred, gt))
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        decay.step()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0

    test_cams = [(torch.as_tensor(v.viewmat, dtype=torch.float32, device=dev)[None],
                  torch.as_tensor(v.K, dtype=torch.float32, device=dev)[None]) for v in scene.test_views]
    scores = []
    with torch.no_grad():
        for i, v in enumerate(scene.test_views):
            rgb, _, _ = render(i, scene.test_views, test_cams, min((args.steps - 1) // 1000, 3))
            scores.append(image_metrics(rgb[0].clamp(0, 1), load_image_tensor(v).to(dev)))
    v0 = views[0]
    out = {"trainer": f"gsplat {__import__('gsplat').__version__} simple_trainer recipe", "rasterizer": args.rasterizer,
           "scene": os.path.basename(os.path.normpath(args.data)), "resolution": f"{v0.width}x{v0.height}",
           "train_views": len(views), "test_views": len(scene.test_views), "steps": args.steps,
           "psnr": float(np.mean([s["psnr"] for s in scores])) if scores else None,
           "ssim": float(np.mean([s["ssim"] for s in scores])) if scores else None,
           "num_gaussians": int(params["means"].shape[0]), "train_time_s": train_s, "steps_per_s": args.steps / train_s,
           "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
           "device": str(dev), "torch": torch.__version__}
    print(json.dumps(out))
    if args.json:
        from gsplat_kit.common.atomic import write_json

        write_json(args.json, out)
    return 0 if out["psnr"] is not None and math.isfinite(out["psnr"]) else 1


if __name__ == "__main__":
    sys.exit(main())
