"""Small pieces both inversion methods share: seeding, a frozen teacher, pixel <-> normalised space."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the caller's global RNG state,
    so one batch's result depends only on its seed (resume and rank splits reproduce it exactly)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Eval mode and no parameter gradients for the duration (restored after): the teacher's running
    statistics are the target, so they must not move, and its weights need no gradients."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def mean_std(cfg, device):
    m = torch.tensor(cfg.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(cfg.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return m, s


def check_targets(model: nn.Module, targets: torch.Tensor, image_size: int, device) -> int:
    """Validate the target labels against the teacher's class count (from a probe forward pass)."""
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.numel() == 0 or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be a non-empty 1-D integer tensor, got shape {tuple(targets.shape)} "
                         f"dtype {targets.dtype}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    with torch.no_grad():
        try:
            n_cls = model(torch.zeros(2, 3, image_size, image_size, device=device)).shape[1]
        except RuntimeError as e:
            raise ValueError(f"the teacher does not accept {image_size}x{image_size} images ({e})") from e
    if int(targets.min()) < 0 or int(targets.max()) >= n_cls:
        raise ValueError(f"targets must lie in [0, {n_cls - 1}] (the teacher has {n_cls} classes), "
                         f"got [{int(targets.min())}, {int(targets.max())}]")
    return n_cls


def log_every(iterations: int) -> int:
    return max(1, iterations // 50)
