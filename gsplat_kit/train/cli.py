"""`gsplat-kit train | eval | render | export`: scene reconstruction from the command line."""
from __future__ import annotations

import argparse
import json
import os
import sys

_TRAIN_FLAGS = {  # CLI dest -> TrainConfig field (only flags the user gave override --config)
    "data": "data", "out": "out", "steps": "steps", "data_factor": "data_factor", "test_every": "test_every",
    "strategy": "strategy", "sh_degree": "sh_degree", "seed": "seed", "device": "device", "ckpt_every": "ckpt_every",
    "resume": "resume", "white_background": "white_background", "random_background": "random_background",
    "viewer": "viewer", "viewer_port": "viewer_port", "init_opacity": "init_opacity",
    "lpips_weights": "lpips_weights", "antialiased": "antialiased", "threads": "num_threads",
}


def _quiet_openmp():
    """Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads
    steal the cores the working ones need (measured 3x slower training on 2 busy cores). Must run before
    torch is imported; an explicit OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _parse_opts(items) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--strategy-opt expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _add_scene_args(p, need_data=True):
    p.add_argument("--data", required=need_data, default=None,
                   help="scene folder: COLMAP (images/ + sparse/0) or NeRF-synthetic (transforms_*.json)")
    p.add_argument("--data-factor", type=int, default=None, help="image downscale factor (uses images_N/ when present)")
    p.add_argument("--test-every", type=int, default=None, help="hold out every Nth image (default 8; 0 = none)")
    p.add_argument("--white-background", action="store_true", default=None, help="NeRF-synthetic: white background")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")


def _train(args) -> int:
    _quiet_openmp()
    try:
        from gsplat_kit.train.config import TrainConfig
        from gsplat_kit.train.trainer import Trainer, TrainingDiverged

        base = TrainConfig.from_json(args.config).to_dict() if args.config else TrainConfig().to_dict()
        for dest, field in _TRAIN_FLAGS.items():
            v = getattr(args, dest, None)
            if v is not None:
                base[field] = v
        opts = dict(base.get("strategy_options") or {})
        if args.cap_max is not None:
            opts["cap_max"] = args.cap_max
        opts.update(_parse_opts(args.strategy_opt))
        base["strategy_options"] = opts
        if args.no_eval:
            base["eval"] = False
        if args.no_progress:
            base["progress"] = False
        if not base["data"] or not base["out"]:
            raise ValueError("--data and --out are required (or set them in --config)")
        if not os.path.isdir(base["data"]):
            raise FileNotFoundError(f"--data {base['data']}: no such folder")
        cfg = TrainConfig.from_dict(base)
        if args.distributed or args.batch_size is not None:
            from gsplat_kit.train.dist_cli import main_distributed

            return main_distributed(cfg, args)
        if cfg.resume and cfg.resume != "auto" and not os.path.isfile(cfg.resume):
            raise FileNotFoundError(f"--resume {cfg.resume}: no such checkpoint")
        m = Trainer(cfg).train()
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:
        return _fail(e)
    if m.get("psnr") is not None:
        lp = f"{m['lpips']:.4f}" if m.get("lpips") is not None else "n/a"
        print(f"held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, LPIPS {lp} over {m['num_test_views']} views; "
              f"{m['num_gaussians']} Gaussians; {m['train_time_s']:.1f} s training")
    print(f"wrote {os.path.join(cfg.out, 'point_cloud.ply')} and {os.path.join(cfg.out, 'metrics.json')}")
    return 0


def _load_scene(args):
    from gsplat_kit.scene import load_scene

    return load_scene(args.data, data_factor=args.data_factor or 1,
                      test_every=8 if args.test_every is None else args.test_every,
                      white_background=bool(args.white_background))


def _eval(args) -> int:
    _quiet_openmp()
    try:
        import torch

        from gsplat_kit.train.evaluation import atomic_write_json, evaluate
        from gsplat_kit.train.export import read_splats
        from gsplat_kit.train.rendering import resolve_device

        splats = read_splats(args.splats, resolve_device(args.device or "auto"))
        scene = _load_scene(args)
        views = scene.test_views if args.split == "test" else scene.train_views
        if not views:
            raise ValueError(f"{args.data}: no {args.split} views (use --split train or --test-every N)")
        src = args.splats if os.path.isdir(args.splats) else os.path.dirname(os.path.abspath(args.splats))
        out = args.out or os.path.join(src, f"eval_{args.split}")
        bg = None if scene.background is None else torch.as_tensor(scene.background, dtype=torch.float32)
        m = evaluate(splats, views, out, bg, args.lpips_weights, None, not args.no_progress)
        m = {**m, "num_gaussians": int(splats["means"].shape[0]), "splats": os.path.abspath(args.splats),
             "split": args.split}
        atomic_write_json(m, os.path.join(out, "metrics.json"))
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    lp = f"{m['lpips']:.4f}" if m["lpips"] is not None else f"n/a ({m['lpips_note']})"
    print(f"{args.split}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, LPIPS {lp} over {m['num_views']} views")
    print(f"wrote {os.path.join(out, 'metrics.json')} and renders beside ground truth under {out}")
    return 0


def _render(args) -> int:
    _quiet_openmp()
    try:
        import torch

        from gsplat_kit.train.export import read_splats
        from gsplat_kit.train.rendering import resolve_device
        from gsplat_kit.train.video import render_video

        if args.frames < 2 or args.fps < 1 or args.scale <= 0:
            raise ValueError("--frames must be >= 2, --fps >= 1 and --scale > 0")
        splats = read_splats(args.splats, resolve_device(args.device or "auto"))
        scene = _load_scene(args)
        bg = None if scene.background is None else torch.as_tensor(scene.background, dtype=torch.float32)
        path = render_video(splats, scene.train_views, args.out, args.frames, args.fps, args.path, args.scale,
                            background=bg, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    print(f"wrote {path} ({args.frames} frames, {args.path} path)")
    return 0


def _export(args) -> int:
    try:
        from gsplat_kit.train.export import read_splats, write_ply, write_splat

        fmt = args.format or ("splat" if args.out.endswith(".splat") else "ply")
        if fmt not in ("ply", "splat"):
            raise ValueError(f"--format must be ply or splat, got {fmt!r}")
        splats = read_splats(args.splats)
        (write_splat if fmt == "splat" else write_ply)(args.out, splats)
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    print(f"wrote {args.out} ({splats['means'].shape[0]} Gaussians, {fmt})")
    return 0


def register(subparsers):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser("train", help="train a 3D Gaussian scene from a COLMAP or NeRF-synthetic folder",
                              description="Train 3D Gaussians on a scene, then evaluate the held-out views. Writes "
                              "OUT/config.json, OUT/ckpts/, OUT/point_cloud.ply, OUT/metrics.json and OUT/eval/.")
    p.add_argument("--config", default=None, help="a config.json (e.g. OUT/config.json of a previous run); flags override it")
    _add_scene_args(p, need_data=False)
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 30000)")
    p.add_argument("--strategy", choices=["default", "mcmc"], default=None,
                   help="densification: default = 3DGS adaptive density control, mcmc = 3DGS-MCMC")
    p.add_argument("--strategy-opt", action="append", metavar="KEY=VALUE",
                   help="override a strategy field, e.g. grow_grad2d=0.0003 or refine_stop_iter=5000 (repeatable)")
    p.add_argument("--cap-max", type=int, default=None, help="MCMC: maximum number of Gaussians")
    p.add_argument("--sh-degree", type=int, default=None, help="maximum SH degree (default 3)")
    p.add_argument("--init-opacity", type=float, default=None, help="initial opacity (default 0.1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores not already busy)")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint every N steps (default 5000; 0 = final only)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from a checkpoint (no value: the latest under OUT/ckpts)")
    p.add_argument("--random-background", action="store_true", default=None, help="render on a random colour each step")
    p.add_argument("--antialiased", action="store_true", default=None, help="Mip-Splatting's antialiased rasterisation")
    p.add_argument("--lpips-weights", default=None, help="folder with LPIPS weights (see gsplat_kit/train/metrics.py)")
    p.add_argument("--viewer", action="store_true", default=None, help="watch training live in the browser")
    p.add_argument("--viewer-port", type=int, default=None)
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from gsplat_kit.train.dist_cli import add_distributed_args

    add_distributed_args(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser("eval", help="score trained splats on a scene's held-out views (PSNR, SSIM, LPIPS)",
                              description="Render the held-out views, write them next to the ground truth and score them.")
    p.add_argument("--splats", required=True, help="a .ply, a checkpoint .pt, or a training output folder")
    _add_scene_args(p)
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--out", default=None, help="folder for renders and metrics.json (default: beside the splats)")
    p.add_argument("--lpips-weights", default=None, help="folder with LPIPS weights")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("render", help="render a smooth orbit/ellipse video through the training cameras",
                              description="Render an mp4 along a closed path fitted to the training cameras.",
                              formatter_class=fmt)
    p.add_argument("--splats", required=True, help="a .ply, a checkpoint .pt, or a training output folder")
    _add_scene_args(p)
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--path", choices=["ellipse", "orbit"], default="ellipse")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--scale", type=float, default=1.0, help="resolution relative to the first training view")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_render)

    p = subparsers.add_parser("export", help="export splats to a standard 3DGS .ply or an antimatter15 .splat",
                              description="Export a checkpoint (or .ply, or output folder) to .ply or .splat.")
    p.add_argument("splats", help="a .ply, a checkpoint .pt, or a training output folder")
    p.add_argument("--out", required=True, help="output file (.ply or .splat)")
    p.add_argument("--format", choices=["ply", "splat"], default=None, help="default: from the --out extension")
    p.set_defaults(func=_export)
