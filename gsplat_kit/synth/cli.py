"""`gsplat-kit synthesize | distill | train-teacher`: data-free image synthesis from the command line."""
from __future__ import annotations

import json
import os
import sys


def _quiet_openmp():
    # idle OpenMP threads sleep instead of spinning: on a shared CPU spinning steals the busy cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible")
    return name


def _parse_opts(items) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--opt expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.replace("-", "_")] = v
    return out


def _threads(n):
    if n:
        import torch

        torch.set_num_threads(int(n))


def _synthesize(args) -> int:
    _quiet_openmp()
    try:
        _threads(args.threads)
        from .runner import synthesize

        device = _device(args.device)
        if args.distributed:   # torchrun sets RANK / WORLD_SIZE / MASTER_ADDR; each rank takes its batches
            import torch.distributed as dist

            try:
                dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            except ValueError as e:
                raise ValueError(f"--distributed: {e} (launch with `torchrun --nproc-per-node N -m "
                                 "gsplat_kit.cli synthesize ... --distributed`)") from e
            if device == "cuda":
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        try:
            res = synthesize(args.teacher, args.method, args.num_images, args.out, batch_size=args.batch_size,
                             iterations=args.iterations, seed=args.seed, device=device,
                             progress=not args.no_progress, **_parse_opts(args.opt))
        finally:
            if args.distributed:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    if "rank" not in res or res.get("rank") == 0:
        keep = {k: v for k, v in res.items() if not isinstance(v, (list, dict))}
        print(json.dumps(keep, indent=2))
    return 0


def _distill(args) -> int:
    _quiet_openmp()
    try:
        _threads(args.threads)
        from .distill import distill

        res = distill(args.images, args.teacher, args.student, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, temperature=args.temperature, seed=args.seed, device=_device(args.device),
                      progress=not args.no_progress, test_limit=args.test_limit, out=args.save_student)
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    print(json.dumps(res, indent=2))
    if args.json:
        from pathlib import Path

        p = Path(args.json)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, p)
    return 0


_ARCHS = ("resnet20", "resnet32", "resnet18", "resnet34")


def _train_teacher(args) -> int:
    _quiet_openmp()
    try:
        from .models import build_model

        build_model(args.arch)              # fail on a bad arch before decoding the data set
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        args.device = _device(args.device)
        from pathlib import Path

        Path(args.out).resolve().parent.mkdir(parents=True, exist_ok=True)
        from .teacher import run
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synthesize", help="images from a classifier alone (NaturalInversion / DeepInversion)",
        description="Synthesise N images that a classifier takes for its classes, batch by batch: PNGs in "
                    "OUT/<class>/, settings.json, per-batch losses in OUT/batches/, losses.json when done. "
                    "Re-running the same command resumes at the next unfinished batch.")
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
    p.add_argument("--student", default="resnet20", choices=_ARCHS)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on this many test images (balanced)")
    p.add_argument("--save-student", default=None, help="write the student checkpoint here")
    p.add_argument("--json", default=None, help="also write the report to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_distill)

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
