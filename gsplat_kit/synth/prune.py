"""Data-free pruning (NaturalInversion's second application): structured filter pruning of a classifier with
torch-pruning, then fine-tuning of the pruned network on synthesised images only, by distillation from the
unpruned teacher (the same KD loss as `distill`).

    from gsplat_kit.synth.prune import prune
    prune("data/teachers/resnet20_cifar10.pt", "out/ni", ratio=0.5, out="out/pruned")["test_accuracy"]

torch-pruning's dependency graph removes coupled channels together (a residual sum's inputs, the BN after a
conv, the next layer's input channels), so the pruned network stays consistent without hand-written rules.
The output layer is never pruned (its outputs are the classes).
"""
from __future__ import annotations

import copy
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from gsplat_kit.common.errors import UserError

from .data import load_cifar10, subset_per_class, to_tensor
from .distill import kd_train, load_synthetic
from .models import load_teacher
from .teacher import evaluate

PRUNE_METHODS = ("l1", "taylor")


class PruneError(UserError):
    """A model or setting that cannot be pruned."""


def conv_filters(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by module name (what pruning removes)."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def cost(model: nn.Module, image_size: int = 32) -> dict:
    """Parameters and multiply-accumulates of one forward pass on one image."""
    import torch_pruning as tp

    dev = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, image_size, image_size, device=dev))
    return {"params": int(params), "macs": int(macs)}


def prune_model(model: nn.Module, ratio: float, method: str = "l1", image_size: int = 32,
                calibration: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """Removes `ratio` of the filters of every prunable layer group of `model` in place; returns it.

    l1: smallest filter L1 norm (data-free). taylor: smallest |weight x gradient| of the cross-entropy on
    `calibration` = (images in [0,1], labels), e.g. synthesised images with their target classes."""
    import torch_pruning as tp

    if not 0 < ratio < 1:
        raise PruneError(f"ratio must lie in (0, 1), got {ratio}")
    if method not in PRUNE_METHODS:
        raise PruneError(f"unknown pruning method {method!r}; choose one of {list(PRUNE_METHODS)}")
    if method == "taylor" and calibration is None:
        raise PruneError("taylor pruning needs calibration images (the synthesised set)")
    dev = next(model.parameters()).device
    example = torch.zeros(1, 3, image_size, image_size, device=dev)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == _num_outputs(model, example)]
    importance = (tp.importance.MagnitudeImportance(p=1) if method == "l1" else tp.importance.TaylorImportance())
    before = conv_filters(model)
    try:
        pruner = tp.pruner.BasePruner(model, example, importance=importance, pruning_ratio=ratio,
                                      ignored_layers=heads)
    except Exception as e:  # torch-pruning's tracer raises whatever the model's forward raises
        raise PruneError(f"torch-pruning cannot trace {type(model).__name__}: {type(e).__name__}: {e}") from None
    if method == "taylor":
        x, y = calibration
        model.eval()
        model.zero_grad(set_to_none=True)
        for i in range(0, len(x), 256):
            F.cross_entropy(model(x[i:i + 256].to(dev)), y[i:i + 256].to(dev), reduction="sum").div(len(x)).backward()
    try:
        pruner.step()
    except Exception as e:
        raise PruneError(f"torch-pruning could not prune {type(model).__name__}: {type(e).__name__}: {e}") from None
    model.zero_grad(set_to_none=True)
    if conv_filters(model) == before:
        raise PruneError(f"{type(model).__name__}: torch-pruning found no prunable convolution filters")
    with torch.no_grad():
        model.eval()(example)  # the pruned network must still run
    return model


def _num_outputs(model, example) -> int:
    with torch.no_grad():
        try:
            out = model.eval()(example)
        except Exception as e:
            raise PruneError(f"{type(model).__name__} does not run on a {tuple(example.shape)} input: "
                             f"{type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise PruneError(f"{type(model).__name__} must return [batch, classes] logits to be pruned, got "
                         f"{type(out).__name__}")
    return int(out.shape[1])


def fine_tune(pruned: nn.Module, teacher: nn.Module, x: torch.Tensor, epochs: int, batch_size: int, lr: float,
              temperature: float, seed: int, device, progress: bool) -> list[float]:
    """KD of the pruned network towards the unpruned teacher on images x only (distill's loss and schedule)."""
    return kd_train(pruned, teacher, x, epochs, batch_size, lr, temperature=temperature, seed=seed,
                    device=device, progress=progress)


def prune(teacher, images, ratio: float = 0.5, method: str = "l1", out=None, epochs: int = 30,
          batch_size: int = 128, lr: float = 0.01, temperature: float = 4.0, seed: int = 0, device: str = "cpu",
          real: int = 0, test_limit: int | None = None, progress: bool = True, pruned_model=None) -> dict:
    """Prune `teacher` (checkpoint path or (model, meta)) by `ratio`, fine-tune it on the synthesised images of
    `images` (`<class>/*.png`, classes matching the teacher's) by KD from the unpruned teacher, and report
    parameters / MACs before and after and the test accuracy before fine-tuning, after it and (real > 0)
    after the same fine-tuning on `real` real CIFAR-10 training images. `out`: a folder for `pruned.pt`
    (loadable by `load_teacher`) and `prune.json`. `pruned_model`: an already pruned copy to start from
    (the benchmark prunes once and fine-tunes many times)."""
    from gsplat_kit.common import atomic

    model, meta = load_teacher(teacher) if isinstance(teacher, (str, os.PathLike)) else teacher
    model = model.to(device).eval()
    nc = int(meta.get("num_classes") or model.num_classes)
    size = int(meta.get("image_size", 32))
    xs, ys, _ = load_synthetic(images, nc, size, meta.get("classes"))
    x_syn, y_syn = to_tensor(xs), torch.from_numpy(ys)
    xte, yte, _ = load_cifar10("test")
    if test_limit:
        xte, yte = subset_per_class(xte, yte, max(1, test_limit // nc), seed=seed)
    xte, yte = to_tensor(xte).to(device), torch.from_numpy(yte).to(device)
    t0 = time.time()
    if pruned_model is None:
        pruned_model = prune_model(copy.deepcopy(model), ratio, method, size,
                                   calibration=(x_syn, y_syn) if method == "taylor" else None)
    prune_seconds = time.time() - t0
    base = copy.deepcopy(pruned_model).to(device)
    res = {"images": str(images), "num_images": len(x_syn), "ratio": ratio, "method": method,
           "before": dict(cost(model, size), filters=conv_filters(model)),
           "after": dict(cost(base, size), filters=conv_filters(base)),
           "teacher_test_accuracy": evaluate(model, xte, yte),
           "pruned_test_accuracy": evaluate(base.eval(), xte, yte), "test_images": len(xte),
           "epochs": epochs, "batch_size": batch_size, "lr": lr, "temperature": temperature, "seed": seed,
           "prune_seconds": round(prune_seconds, 2)}
    tuned = copy.deepcopy(base)
    t0 = time.time()
    losses = fine_tune(tuned, model, x_syn, epochs, batch_size, lr, temperature, seed, device, progress)
    res.update({"test_accuracy": evaluate(tuned.eval(), xte, yte), "kd_loss_first": losses[0],
                "kd_loss_last": losses[-1], "finetune_seconds": round(time.time() - t0, 1)})
    if real:
        xtr, ytr, _ = load_cifar10("train")
        xr, _ = subset_per_class(xtr, ytr, max(1, real // nc), seed=seed + 1)
        ref = copy.deepcopy(base)
        fine_tune(ref, model, to_tensor(xr), epochs, batch_size, lr, temperature, seed, device, progress)
        res.update({"real_images": len(xr), "real_test_accuracy": evaluate(ref.eval(), xte, yte)})
    if out is not None:
        from .models import save_teacher

        arch = meta.get("arch")
        pruned_meta = {"ratio": ratio, "method": method, "from": str(meta.get("path", teacher if isinstance(
            teacher, (str, os.PathLike)) else ""))}
        save_teacher(tuned.cpu(), arch, os.path.join(out, "pruned.pt"), meta.get("classes"),
                     extra={"test_accuracy": res["test_accuracy"], "pruned": pruned_meta})
        atomic.write_json(os.path.join(out, "prune.json"), res)
    return res
