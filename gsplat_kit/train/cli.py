"""`gsplat-kit train | eval | render | export`: scene reconstruction from the command line.

Every option is checked here, before any data is read: a bad value is a UserError naming the flag (one
line, exit 2 through gsplat_kit.cli). The modules that import torch (trainer, evaluation, video, scene
loading) are imported inside the verbs, because importing torch costs far more than parsing arguments
and `gsplat-kit --help` or a refused option should not pay for it.
"""
from __future__ import annotations

import argparse
import os
import sys

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import check_range, parse_key_values
from gsplat_kit.common.run_folder import RunFolder
from gsplat_kit.train.config import DEVICE_PATTERN, TrainConfig

_TRAIN_FLAGS = {  # CLI dest -> TrainConfig field (only flags the user gave override --config)
    "data": "data", "out": "out", "steps": "steps", "data_factor": "data_factor", "test_every": "test_every",
    "strategy": "strategy", "sh_degree": "sh_degree", "seed": "seed", "device": "device", "ckpt_every": "ckpt_every",
    "resume": "resume", "white_background": "white_background", "random_background": "random_background",
    "viewer": "viewer", "viewer_port": "viewer_port", "init_opacity": "init_opacity",
    "lpips_weights": "lpips_weights", "antialiased": "antialiased", "threads": "num_threads",
}
# eval / render: the ranges of their own numeric options (train's are TrainConfig's)
_VIEW_RANGES = {"data_factor": dict(lo=1, hi=64), "test_every": dict(lo=0), "frames": dict(lo=2, hi=100_000),
                "fps": dict(lo=1, hi=240), "scale": dict(lo=0.0, hi=8.0, lo_open=True)}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _quiet_openmp():
    """Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads
    steal the cores the working ones need (BENCHMARKS.md has the figures). Must run before torch is
    imported; an explicit OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _add_scene_args(p, need_data=True):
    p.add_argument("--data", required=need_data, default=None,
                   help="scene folder: COLMAP (images/ + sparse/0) or NeRF-synthetic (transforms_*.json)")
    p.add_argument("--data-factor", type=int, default=None, help="image downscale factor (uses images_N/ when present)")
    p.add_argument("--test-every", type=int, default=None, help="hold out every Nth image (default 8; 0 = none)")
    p.add_argument("--white-background", action="store_true", default=None, help="NeRF-synthetic: white background")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")


def train_config(args) -> TrainConfig:
    """The TrainConfig of `train`'s arguments: --config, then the flags given; type- and range-checked,
    each error naming the flag or the config file's field that set the value."""
    if args.config:
        base = TrainConfig.from_json(args.config).to_dict()
        names = {f: f"--config {args.config}: {f}" for f in base}
    else:
        base, names = TrainConfig().to_dict(), {}
    for dest, field in _TRAIN_FLAGS.items():
        v = getattr(args, dest, None)
        if v is not None:
            base[field], names[field] = v, _flag(dest)
    opts = dict(base.get("strategy_options") or {})
    if args.cap_max is not None:
        opts["cap_max"] = check_range("--cap-max", args.cap_max, lo=1)
    opts.update(parse_key_values(args.strategy_opt, "--strategy-opt"))
    if args.cap_max is not None or args.strategy_opt:
        names["strategy_options"] = "--strategy-opt"
    base["strategy_options"] = opts
    if args.no_eval:
        base["eval"] = False
    if args.no_progress:
        base["progress"] = False
    if not base["data"] or not base["out"]:
        raise UserError("--data and --out are required (or set them in --config)")
    return TrainConfig.from_dict(base, f"--config {args.config}" if args.config else "train", names).validate(names)


def _train(args) -> int:
    _quiet_openmp()
    cfg = train_config(args)
    if not os.path.isdir(cfg.data):
        raise UserError(f"--data {cfg.data}: no such folder")
    if args.distributed or args.batch_size is not None:
        from gsplat_kit.train.dist_cli import main_distributed

        return main_distributed(cfg, args)
    if cfg.resume and cfg.resume != "auto" and not os.path.isfile(cfg.resume):
        raise UserError(f"--resume {cfg.resume}: no such checkpoint")
    if cfg.viewer:  # a port the viewer cannot listen on fails now, not after the scene has loaded
        from gsplat_kit.viewer.live import LiveViewer

        LiveViewer.check_port(cfg.viewer_port)
    from gsplat_kit.train.trainer import Trainer

    run = RunFolder.claim(cfg.out, "train", resume=cfg.resumes_in_place(), overwrite=args.overwrite)
    try:
        trainer = Trainer(cfg, run=run)
    except BaseException:
        run.release()
        raise
    m = trainer.train()
    if m.get("psnr") is not None:
        lp = f"{m['lpips']:.4f}" if m.get("lpips") is not None else "n/a"
        print(f"held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, LPIPS {lp} over {m['num_test_views']} views; "
              f"{m['num_gaussians']} Gaussians; {m['train_time_s']:.1f} s training")
    print(f"wrote {os.path.join(cfg.out, 'point_cloud.ply')} and {os.path.join(cfg.out, 'metrics.json')}")
    return 0


def _check_view_args(args):
    """eval / render: every numeric option and the device, before anything is loaded."""
    for dest, bounds in _VIEW_RANGES.items():
        v = getattr(args, dest, None)
        if v is not None:
            check_range(_flag(dest), v, **bounds)
    if args.device is not None and not DEVICE_PATTERN.match(args.device):
        raise UserError(f"--device {args.device!r}: expected auto, cpu, cuda or cuda:N")


def _load_view_inputs(args):
    """(splats on the device, scene, background) for eval / render."""
    import torch

    from gsplat_kit.scene import load_scene
    from gsplat_kit.scene.splats import load_splats
    from gsplat_kit.train.rendering import resolve_device

    splats = load_splats(args.splats, resolve_device(args.device or "auto")).as_dict()
    scene = load_scene(args.data, data_factor=args.data_factor or 1,
                       test_every=8 if args.test_every is None else args.test_every,
                       white_background=bool(args.white_background))
    bg = None if scene.background is None else torch.as_tensor(scene.background, dtype=torch.float32)
    return splats, scene, bg


def _eval(args) -> int:
    _quiet_openmp()
    _check_view_args(args)
    from gsplat_kit.common.atomic import write_json
    from gsplat_kit.train.evaluation import evaluate

    splats, scene, bg = _load_view_inputs(args)
    views = scene.test_views if args.split == "test" else scene.train_views
    if not views:
        raise UserError(f"{args.data}: no {args.split} views (use --split train or --test-every N)")
    src = args.splats if os.path.isdir(args.splats) else os.path.dirname(os.path.abspath(args.splats))
    out = args.out or os.path.join(src, f"eval_{args.split}")
    m = evaluate(splats, views, out, bg, args.lpips_weights, None, not args.no_progress)
    m = {**m, "num_gaussians": int(splats["means"].shape[0]), "splats": os.path.abspath(args.splats),
         "split": args.split}
    write_json(os.path.join(out, "metrics.json"), m)
    lp = f"{m['lpips']:.4f}" if m["lpips"] is not None else f"n/a ({m['lpips_note']})"
    print(f"{args.split}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, LPIPS {lp} over {m['num_views']} views")
    print(f"wrote {os.path.join(out, 'metrics.json')} and renders beside ground truth under {out}")
    return 0


def _render(args) -> int:
    _quiet_openmp()
    _check_view_args(args)
    from gsplat_kit.train.video import render_video

    splats, scene, bg = _load_view_inputs(args)
    path = render_video(splats, scene.train_views, args.out, args.frames, args.fps, args.path, args.scale,
                        background=bg, progress=not args.no_progress)
    print(f"wrote {path} ({args.frames} frames, {args.path} path)")
    return 0


# the names of gsplat_kit.scene.formats.FORMATS (a test keeps them equal), here so that --help needs no torch
EXPORT_FORMATS = ["ply", "compressed-ply", "splat", "spz"]


def _export(args) -> int:
    from gsplat_kit.scene.formats import format_for, save_splats
    from gsplat_kit.scene.splats import load_splats

    fmt = format_for(args.out, args.format)  # an unknown extension is refused before the (slow) load
    options = {}
    if args.spz_version is not None:
        if fmt.name != "spz":
            raise UserError(f"--spz-version applies to .spz output only, not {args.out}")
        options["spz_version"] = args.spz_version
    splats = load_splats(args.splats)  # checkpoints load as data only (weights_only)
    save_splats(args.out, splats, fmt.name, **options)
    print(f"wrote {args.out} ({splats.num} Gaussians, {fmt.name}: {fmt.summary})")
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run that OUT holds (its files are replaced when this run finishes)")
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

    p = subparsers.add_parser("export", help="convert splats to .ply, .compressed.ply, .splat or .spz",
                              description="Export a checkpoint, a splat file (any format load_splats reads) or an "
                              "output folder to a splat file in the format --out's extension names: .ply (3DGS, exact), "
                              ".compressed.ply (PlayCanvas), .splat (antimatter15), .spz (Niantic).")
    p.add_argument("splats", help="a .ply, .spz, .splat, a checkpoint .pt, or a training output folder")
    p.add_argument("--out", required=True, help="output file: .ply, .compressed.ply, .splat or .spz")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                   help="default: from the --out extension (compressed-ply also takes a plain .ply name)")
    p.add_argument("--spz-version", type=int, choices=[2, 3, 4], default=None,
                   help=".spz format version (default 3: gzip, smallest-three rotations; 4: zstd streams, for "
                   "Niantic's current library; 2 for older readers)")
    p.set_defaults(func=_export)
