"""`gsplat-kit synthesize | distill | prune | train-teacher`: data-free image synthesis from the command line.

Bad input raises `UserError` (or an OSError about a path); the one handler in gsplat_kit/cli.py prints it
as one line and exits 2. Every numeric option is range-checked here, before any work starts.
"""
from __future__ import annotations

import contextlib
import json
import os

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import check_range, parse_key_values

_ARCHS = ("resnet20", "resnet32", "resnet18", "resnet34")
_POS = dict(lo=1)                       # a count: >= 1
_NONNEG = dict(lo=0)
_RATE = dict(lo=0, lo_open=True)        # a learning rate or temperature: > 0
# verb -> {argparse dest: check_range keywords}; options left at None are not checked
RANGES = {
    "synthesize": {"num_images": _POS, "batch_size": _POS, "iterations": _POS, "seed": _NONNEG, "threads": _NONNEG},
    "distill": {"epochs": _POS, "batch_size": _POS, "lr": _RATE, "temperature": _RATE, "seed": _NONNEG,
                "threads": _NONNEG, "test_limit": _POS},
    "prune": {"ratio": dict(lo=0, hi=1, lo_open=True, hi_open=True), "epochs": _POS, "batch_size": _POS,
              "lr": _RATE, "temperature": _RATE, "seed": _NONNEG, "threads": _NONNEG, "real": _NONNEG,
              "test_limit": _POS},
    "train-teacher": {"epochs": _POS, "batch_size": _POS, "lr": _RATE, "weight_decay": _NONNEG, "seed": _NONNEG,
                      "threads": _NONNEG, "train_limit": _POS},
}


def check_args(verb: str, args) -> None:
    for dest, kw in RANGES[verb].items():
        value = getattr(args, dest)
        if value is not None:
            check_range(f"--{dest.replace('_', '-')}", value, **kw)


def _quiet_openmp():
    # idle OpenMP threads sleep instead of spinning: on a shared CPU spinning steals the busy cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (cpu | cuda | cuda:N | auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return name


def _threads(n):
    if n:
        import torch

        torch.set_num_threads(int(n))


def _print_json(res: dict) -> None:
    print(json.dumps(res, indent=2))


def _synthesize(args) -> int:
    check_args("synthesize", args)
    overrides = parse_key_values(args.opt, "--opt")
    overrides = {k.replace("-", "_"): v for k, v in overrides.items()}
    _quiet_openmp()
    from gsplat_kit.common.run_folder import RunFolder

    from .methods import make_config
    from .runner import synthesize

    make_config(args.method, args.batch_size, args.iterations, **overrides)   # field errors before any work
    _threads(args.threads)
    device = _device(args.device)
    teacher = _load_teacher(args.teacher)
    if args.distributed and args.overwrite:
        raise UserError("--distributed and --overwrite exclude each other (the ranks share one folder)")
    rank0 = True
    if args.distributed:   # torchrun sets RANK / WORLD_SIZE / MASTER_ADDR; each rank takes its batches
        import torch.distributed as dist

        try:
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        except ValueError as e:
            raise UserError(f"--distributed: {e} (launch with `torchrun --nproc-per-node N -m "
                            "gsplat_kit.cli synthesize ... --distributed`)") from None
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        rank0 = dist.get_rank() == 0
    # rank 0 claims the folder (lock, resume/overwrite rules); the other ranks write into it beside it
    run = RunFolder.claim(args.out, "synthesize", resume=args.resume, overwrite=args.overwrite) if rank0 else None
    try:
        res = synthesize(teacher, args.method, args.num_images, run.path if run else args.out,
                         batch_size=args.batch_size, iterations=args.iterations, seed=args.seed, device=device,
                         progress=not args.no_progress, **overrides)
        if run is not None:
            if res.get("complete", True):
                run.finish()
            else:
                run.release()
    except BaseException:
        if run is not None:
            run.release()
        raise
    finally:
        if args.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if "rank" not in res or res.get("rank") == 0:
        _print_json({k: v for k, v in res.items() if not isinstance(v, (list, dict))})
    return 0


def _distill(args) -> int:
    device, teacher = _kd_start("distill", args)
    from gsplat_kit.common import atomic
    from gsplat_kit.common.run_folder import RunFolder

    from .distill import distill

    run = RunFolder.claim(args.out, "distill", overwrite=args.overwrite, resumable=False) if args.out else None
    with run if run is not None else contextlib.nullcontext():
        save = args.save_student or (os.path.join(run.path, "student.pt") if run else None)
        res = distill(args.images, teacher, args.student, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, temperature=args.temperature, seed=args.seed, device=device,
                      progress=not args.no_progress, test_limit=args.test_limit, out=save)
        if run is not None:
            atomic.write_json(os.path.join(run.path, "distill.json"), res)
    _print_json(res)
    if args.json:
        atomic.write_json(args.json, res)
    return 0


def _prune(args) -> int:
    device, teacher = _kd_start("prune", args)
    from gsplat_kit.common.run_folder import RunFolder

    from .prune import prune

    with RunFolder.claim(args.out, "prune", overwrite=args.overwrite, resumable=False) as run:
        res = prune(teacher, args.images, args.ratio, args.method, out=run.path, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, seed=args.seed,
                    device=device, real=args.real, test_limit=args.test_limit, progress=not args.no_progress)
    _print_json({k: v for k, v in res.items() if k not in ("before", "after")} |
                {"params": [res["before"]["params"], res["after"]["params"]],
                 "macs": [res["before"]["macs"], res["after"]["macs"]]})
    return 0


def _load_teacher(path: str):
    """(model, meta with its path): a bad teacher file is refused before an output folder is claimed."""
    from .models import load_teacher

    model, meta = load_teacher(path)
    return model, dict(meta, path=path)


def _kd_start(verb: str, args):
    """distill / prune, before an output folder is claimed: the argument checks, threads, the device, and
    the teacher with a check that --images fits it. Returns (device, (model, meta))."""
    check_args(verb, args)
    _quiet_openmp()
    from .distill import load_synthetic

    _threads(args.threads)
    device = _device(args.device)
    model, meta = _load_teacher(args.teacher)
    load_synthetic(args.images, int(meta["num_classes"]), int(meta["image_size"]), meta.get("classes"))
    return device, (model, meta)


def _train_teacher(args) -> int:
    check_args("train-teacher", args)
    _quiet_openmp()
    from pathlib import Path

    from .models import build_model

    build_model(args.arch)              # fail on a bad arch before decoding the data set
    args.device = _device(args.device)
    Path(args.out).resolve().parent.mkdir(parents=True, exist_ok=True)
    from .teacher import run

    return run(args)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synthesize", help="images from a classifier alone (NaturalInversion / DeepInversion)",
        description="Synthesise N images that a classifier takes for its classes, batch by batch: PNGs in "
                    "OUT/<class>/, settings.json, per-batch losses in OUT/batches/, losses.json when done. "
                    "An interrupted run continues at the next unfinished batch with --resume.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (.pt; see train-teacher)")
    p.add_argument("--method", choices=("natural", "deep"), default="natural")
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the paper's 256)")
    p.add_argument("--iterations", type=int, default=None, help="optimisation steps per batch (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --opt bn_weight=5 --opt use_ftp=false (repeatable)")
    p.add_argument("--distributed", action="store_true",
                   help="join torch.distributed (launch with torchrun); ranks take disjoint batches")
    _folder_flags(p, resume=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_synthesize)

    p = subparsers.add_parser(
        "distill", help="knowledge-distil a fresh student on synthesised images; report test accuracy",
        description="Train a fresh student on the images of --images only (KL on temperature-scaled teacher "
                    "logits), then report its accuracy and the teacher's on the real CIFAR-10 test set, and "
                    "distribution checks of the images (per-class penultimate-feature distance to real "
                    "images, Inception-style score with the teacher).")
    p.add_argument("--images", required=True, help="folder of <class>/*.png (from synthesize)")
    p.add_argument("--teacher", required=True)
    _kd_flags(p, epochs=100, lr=0.1)
    p.add_argument("--student", default="resnet20", choices=_ARCHS)
    p.add_argument("--out", default=None, help="output folder for student.pt and distill.json")
    p.add_argument("--save-student", default=None, help="write the student checkpoint here")
    p.add_argument("--json", default=None, help="also write the report to this file")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.set_defaults(func=_distill)

    p = subparsers.add_parser(
        "prune", help="prune a classifier's filters, fine-tune it on synthesised images only",
        description="Structured (filter) pruning of the teacher with torch-pruning, then fine-tuning of the "
                    "pruned network on the images of --images only, by distillation from the unpruned "
                    "teacher. Reports parameters and MACs before/after and test accuracy before and after "
                    "fine-tuning (and after fine-tuning on --real N real images, the reference). Writes "
                    "OUT/pruned.pt (a teacher file) and OUT/prune.json.")
    p.add_argument("--teacher", required=True)
    p.add_argument("--images", required=True, help="folder of <class>/*.png (from synthesize)")
    p.add_argument("--ratio", type=float, required=True, help="fraction of filters to remove, in (0, 1)")
    p.add_argument("--method", choices=("l1", "taylor"), default="l1",
                   help="filter importance: L1 norm (data-free) or Taylor (|w x grad| on the images)")
    p.add_argument("--out", required=True, help="output folder")
    _kd_flags(p, epochs=30, lr=0.01)
    p.add_argument("--real", type=int, default=0, help="also fine-tune on N real training images (reference)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.set_defaults(func=_prune)

    p = subparsers.add_parser(
        "train-teacher", help="train a CIFAR-10 classifier (the teacher to invert)",
        description="Train a CIFAR ResNet on ../shared/data/cifar10/train (one-cycle SGD, crop + flip), report "
                    "its test accuracy and save weights plus a JSON with the accuracy and the command.")
    p.add_argument("--arch", default="resnet20", help="|".join(_ARCHS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--out", default="data/teachers/resnet20_cifar10.pt")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--train-limit", type=int, default=None, help="use only this many training images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_teacher)


def _folder_flags(p, resume: bool):
    g = p.add_mutually_exclusive_group()
    if resume:
        g.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out (at the end)")


def _kd_flags(p, epochs: int, lr: float):
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on this many test images (balanced)")
    p.add_argument("--no-progress", action="store_true")
