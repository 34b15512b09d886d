"""The one model-inversion loop that DeepInversion and NaturalInversion configure.

A method says *what is optimised and how an image is produced* (an `ImageSource`: DeepInversion's pixels,
NaturalInversion's generator + Feature Transfer Pyramid + channel scaling) and its settings (a config
derived from `InversionConfig`); the loop is the same for both: jitter/flip the batch, the DeepInversion
objective (cross-entropy to the targets, BN-statistics match, image priors, optionally ADI's competition
term), Adam, and keep the lowest-loss batch as the result (both references keep their best inputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import check_range

from ._common import check_targets, frozen, log_every, mean_std, model_device, seeded
from .bn_hooks import BNStatsLoss
from .data import CIFAR10_MEAN, CIFAR10_STD
from .priors import competition_loss, jitter_flip, l2_prior, tv_l1, tv_l2


@dataclass
class InversionConfig:
    """What every inversion method shares; a method's config adds its own fields (defaults: its paper's)."""
    batch_size: int = 256
    iterations: int = 2000
    bn_weight: float = 10.0             # r_feature
    first_bn_multiplier: float = 1.0    # 10 in the ImageNet setting
    tv_l2_weight: float = 2.5e-5
    tv_l1_weight: float = 0.0
    l2_weight: float = 0.0
    competition_weight: float = 0.0     # Adaptive DeepInversion (needs a student)
    competition_temperature: float = 3.0
    jitter: int = 2
    flip: bool = False
    image_size: int = 32
    mean: tuple = CIFAR10_MEAN
    std: tuple = CIFAR10_STD

    # field -> check_range keywords; a method's config extends this with its own fields
    RANGES = {"batch_size": dict(lo=1), "iterations": dict(lo=1), "bn_weight": dict(lo=0),
              "first_bn_multiplier": dict(lo=0), "tv_l2_weight": dict(lo=0), "tv_l1_weight": dict(lo=0),
              "l2_weight": dict(lo=0), "competition_weight": dict(lo=0),
              "competition_temperature": dict(lo=0, lo_open=True), "jitter": dict(lo=0), "image_size": dict(lo=8)}

    def check(self, where: str = "config"):
        """Range checks of every numeric field (a UserError naming the field), before any work starts."""
        ranges = {}
        for cls in reversed(type(self).__mro__):
            ranges.update(cls.__dict__.get("RANGES", {}))
        for name, kw in ranges.items():
            check_range(f"{where} {name}", getattr(self, name), **kw)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(c, (int, float)) for c in v):
                raise UserError(f"{where} {name} must be three numbers, got {v!r}")
        if min(self.std) <= 0:
            raise UserError(f"{where} std must be > 0, got {self.std!r}")
        return self


class ImageSource(Protocol):
    """What a method optimises and how it turns that into a batch of images (teacher-normalised space)."""

    def param_groups(self) -> list[dict]:
        """Adam parameter groups (with their learning rates)."""

    def images(self, gen: torch.Generator, bn: BNStatsLoss) -> torch.Tensor:
        """The batch as the method makes it this iteration, before the loss's jitter; `gen` draws the
        method's own augmentations, `bn` lets a method pause the BN-statistics hooks for side passes."""


def image_priors(x, cfg) -> torch.Tensor:
    loss = cfg.tv_l2_weight * tv_l2(x)
    if cfg.tv_l1_weight:
        loss = loss + cfg.tv_l1_weight * tv_l1(x)
    if cfg.l2_weight:
        loss = loss + cfg.l2_weight * l2_prior(x)
    return loss


def inversion_loss(teacher, student, x, targets, bn: BNStatsLoss, cfg, mean, std):
    """The DeepInversion objective of a (jittered) normalised batch x: cross-entropy to the targets, the
    BN-statistics match, the image priors and, with a student, the Adaptive DeepInversion competition.
    Returns (loss, cross-entropy, BN term)."""
    logits = teacher(x * std + mean)
    ce, loss_bn = F.cross_entropy(logits, targets), bn.loss()
    loss = ce + cfg.bn_weight * loss_bn + image_priors(x, cfg)
    if cfg.competition_weight:
        with frozen(student):
            loss = loss + cfg.competition_weight * competition_loss(logits, student(x * std + mean),
                                                                    cfg.competition_temperature)
    return loss, ce, loss_bn


def invert(teacher: nn.Module, targets: torch.Tensor, cfg: InversionConfig, make_source, seed: int = 0,
           progress: bool = False, student: nn.Module | None = None, name: str = "inversion",
           schedule=None):
    """One batch: `make_source(teacher, targets, num_classes)` builds the method's trainable parts (under
    the batch's seed); `schedule(optimizer)` may return an lr scheduler stepped once per iteration.
    Returns (images [B,3,H,W] in [0,1] on the CPU, log dict)."""
    from tqdm import tqdm

    dev = model_device(teacher)
    if cfg.competition_weight and student is None:
        raise ValueError("competition_weight > 0 (Adaptive DeepInversion) needs a student model")
    with frozen(teacher), BNStatsLoss(teacher, cfg.first_bn_multiplier) as bn, seeded(seed, dev):
        n_cls = check_targets(teacher, targets, cfg.image_size, dev)
        targets = torch.as_tensor(targets).long().to(dev)
        source = make_source(teacher, targets, n_cls)
        mean, std = mean_std(cfg, dev)
        opt = torch.optim.Adam(source.param_groups(), betas=(0.9, 0.999))
        sched = schedule(opt) if schedule else None
        gen = torch.Generator().manual_seed(seed)
        best, best_loss, losses = None, float("inf"), []
        every = log_every(cfg.iterations)
        for it in tqdm(range(cfg.iterations), disable=not progress, desc=name, leave=False):
            x = source.images(gen, bn)
            xj = jitter_flip(x, gen, cfg.jitter, cfg.flip)
            loss, ce, loss_bn = inversion_loss(teacher, student, xj, targets, bn, cfg, mean, std)
            lv = loss.item()
            if lv < best_loss:        # the references keep the lowest-loss batch (before the loss's jitter)
                best_loss, best = lv, x.detach().clone()
            if it % every == 0 or it == cfg.iterations - 1:
                losses.append(round(lv, 5))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
        if best is None:
            raise FloatingPointError(f"{name}: the loss was never finite (last {lv}); lower the learning rates")
        pixels = best * std + mean
        images = pixels.clamp(0, 1)
        with torch.no_grad(), bn.paused():
            acc = (teacher(images).argmax(1) == targets).float().mean().item()
            # diagnostics of the saved form: what the optimiser saw (pixels outside [0, 1] included), and the
            # reference scripts' way of saving (save_image(normalize=True, scale_each=True): per-image min-max)
            acc_unclamped = (teacher(pixels).argmax(1) == targets).float().mean().item()
            lo, hi = pixels.amin((1, 2, 3), keepdim=True), pixels.amax((1, 2, 3), keepdim=True)
            minmax = (pixels - lo) / (hi - lo).clamp_min(1e-12)
            acc_minmax = (teacher(minmax).argmax(1) == targets).float().mean().item()
    return images.cpu(), {"loss": losses, "loss_first": losses[0], "loss_final": lv, "loss_best": best_loss,
                          "ce": ce.item(), "bn": loss_bn.item(), "teacher_acc": acc,
                          "teacher_acc_unclamped": acc_unclamped, "teacher_acc_minmax": acc_minmax,
                          "clipped_fraction": float(((pixels < 0) | (pixels > 1)).float().mean())}
