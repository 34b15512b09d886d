"""Train a CIFAR-10 classifier (the teacher for synthesis, or a reference student) from scratch.

SGD + Nesterov momentum, a one-cycle learning-rate schedule, random crop (pad 4) and horizontal flip.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gsplat_kit.common import atomic
from gsplat_kit.common.atomic import atomic_path
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.safe_load import load_torch_data

from .data import load_cifar10, subset_per_class, to_tensor
from .models import build_model, save_teacher


def one_cycle(opt, lr: float, total: int, pct_start: float):
    """The one-cycle schedule (warm-up to `lr`, then anneal) over `total` steps; a run of fewer than 4 steps
    (a smoke test) has no room for its two phases (OneCycleLR divides by zero) and keeps `lr` constant."""
    if total < 4:
        for g in opt.param_groups:
            g["lr"] = lr
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=pct_start,
                                               div_factor=10, final_div_factor=100)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip, for a whole batch at once."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    out = xp.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, 3, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def augment_on(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`augment` with the random draws on the CPU generator and the gather on x's device."""
    return augment(x.cpu(), gen).to(x.device)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on [0,1] images x."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was)
    return correct / max(1, len(x))


def train_classifier(arch="resnet20", epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, out=None,
                     device="cpu", seed=0, threads=None, train_limit=None, log=print, command=None,
                     test_limit=None):
    """Train and save; returns a dict with test accuracy and timings. Resumes from `out`+'.ckpt' if present."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    xtr, ytr, classes = load_cifar10("train")
    xte, yte, _ = load_cifar10("test")
    if train_limit:
        idx = np.random.default_rng(seed).permutation(len(xtr))[:train_limit]
        xtr, ytr = xtr[idx], ytr[idx]
    if test_limit:  # a quick check only; the reported teacher accuracy uses the whole test set
        xte, yte = subset_per_class(xte, yte, max(1, test_limit // len(classes)), seed=seed)
    xtr, ytr = to_tensor(xtr).to(device), torch.from_numpy(ytr).to(device)
    xte, yte = to_tensor(xte).to(device), torch.from_numpy(yte).to(device)
    model = build_model(arch, len(classes)).to(device)
    cl = torch.channels_last  # ~20% faster convolutions on the CPU (measured), harmless on GPUs
    model = model.to(memory_format=cl)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = len(xtr) // batch_size
    if steps_per_epoch < 1:
        raise UserError(f"batch size {batch_size} exceeds the {len(xtr)} training images")
    total = epochs * steps_per_epoch
    sched = one_cycle(opt, lr, total, min(0.5, max(0.25, 2.0 / total)))
    gen = torch.Generator().manual_seed(seed)
    start_epoch, history = 0, []
    ckpt = Path(str(out) + ".ckpt") if out else None
    if ckpt and ckpt.exists():
        # data only (tensors, numbers, strings, plain containers; the optimiser, schedule and RNG states
        # included): a planted .ckpt can never run code
        st = load_torch_data(ckpt, "training checkpoint", map_location=device)
        if not isinstance(st, dict) or not {"model", "opt", "sched", "gen", "epoch", "history"} <= set(st):
            raise UserError(f"{ckpt}: not a train-teacher checkpoint; remove it to start afresh")
        if st.get("arch") == arch and st.get("epochs") == epochs:
            model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); sched.load_state_dict(st["sched"])
            gen.set_state(st["gen"]); start_epoch, history = st["epoch"], st["history"]
            log(f"resuming {ckpt} at epoch {start_epoch}")
    t_start = time.time()
    for ep in range(start_epoch, epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot, n = 0.0, 0
        for it in range(steps_per_epoch):
            idx = perm[it * batch_size:(it + 1) * batch_size]
            xb = augment(xtr[idx.to(xtr.device)], gen) if xtr.device.type == "cpu" else augment_on(xtr[idx.to(xtr.device)], gen)
            loss = F.cross_entropy(model(xb.contiguous(memory_format=cl)), ytr[idx.to(ytr.device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item(); n += 1
        acc = evaluate(model, xte, yte) if (ep % 5 == 4 or ep == epochs - 1) else None
        history.append({"epoch": ep + 1, "loss": tot / n, "test_acc": acc, "seconds": time.time() - t0})
        log(f"epoch {ep + 1}/{epochs} loss {tot / n:.4f} " + (f"test acc {acc:.4f} " if acc is not None else "")
            + f"({time.time() - t0:.0f}s)")
        if ckpt:
            with atomic_path(ckpt) as tmp:
                torch.save({"arch": arch, "epochs": epochs, "epoch": ep + 1, "model": model.state_dict(),
                            "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                            "history": history}, tmp)
    acc = evaluate(model, xte, yte)
    result = {"arch": arch, "dataset": "cifar10", "test_accuracy": acc, "epochs": epochs, "batch_size": batch_size,
              "max_lr": lr, "weight_decay": weight_decay, "train_images": len(xtr), "test_images": len(xte), "seed": seed,
              "params": sum(p.numel() for p in model.parameters()),
              "train_seconds_this_run": round(time.time() - t_start, 1), "history": history,
              "command": command or " ".join(sys.argv),
              "device": f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)" if device == "cpu" else torch.cuda.get_device_name()}
    if out:
        model = model.cpu().to(memory_format=torch.contiguous_format)
        save_teacher(model, arch, out, classes, extra={"test_accuracy": acc})
        atomic.write_text(Path(out).with_suffix(".json"), json.dumps(result, indent=2))
        if ckpt and ckpt.exists():
            ckpt.unlink()
    return result


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def add_arguments(p):
    p.add_argument("--arch", default="resnet20", help="resnet20 | resnet32 | resnet18 | resnet34 (CIFAR variants)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--out", default="data/teachers/resnet20_cifar10.pt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--train-limit", type=int, default=None, help="use only this many training images")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    res = train_classifier(args.arch, args.epochs, args.batch_size, args.lr, args.weight_decay, args.out,
                           args.device, args.seed, args.threads, args.train_limit,
                           command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
