"""DeepInversion (Yin et al., CVPR 2020): optimise a batch of images directly with Adam so that the
teacher classifies them as the targets while the statistics they induce in every BN layer match the
running statistics (plus TV / l2 image priors, random jitter, and ADI's competition term as an option).

Defaults are the reference's CIFAR-10 "parameters from the paper" (NVlabs/DeepInversion, cifar10/README.md
and deepinversion_cifar10.py): batch 256, 2000 iterations, Adam lr 0.05, BN weight 10, TV(l2) 2.5e-5,
l2 0, jitter 2, no flip, no competition term.
The images are optimised in the teacher's normalised space (as there) and returned in [0,1] pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_targets, frozen, log_every, mean_std, model_device, seeded
from .bn_hooks import BNStatsLoss
from .data import CIFAR10_MEAN, CIFAR10_STD
from .priors import competition_loss, jitter_flip, l2_prior, tv_l1, tv_l2


@dataclass
class DeepInversionConfig:
    batch_size: int = 256
    iterations: int = 2000
    lr: float = 0.05
    bn_weight: float = 10.0             # r_feature
    first_bn_multiplier: float = 1.0    # 10 in the ImageNet setting
    tv_l2_weight: float = 2.5e-5
    tv_l1_weight: float = 0.0
    l2_weight: float = 0.0
    competition_weight: float = 0.0     # Adaptive DeepInversion (needs a student)
    competition_temperature: float = 3.0
    jitter: int = 2
    flip: bool = False
    cosine_lr: bool = False             # the ImageNet script's schedule; CIFAR uses a constant lr
    image_size: int = 32
    mean: tuple = CIFAR10_MEAN
    std: tuple = CIFAR10_STD


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


def invert_batch(teacher: nn.Module, targets: torch.Tensor, config: DeepInversionConfig | None = None,
                 seed: int = 0, progress: bool = False, student: nn.Module | None = None):
    """One DeepInversion batch. Returns (images [B,3,H,W] in [0,1] on the CPU, log dict)."""
    from tqdm import tqdm

    cfg = config or DeepInversionConfig()
    dev = model_device(teacher)
    if cfg.competition_weight and student is None:
        raise ValueError("competition_weight > 0 (Adaptive DeepInversion) needs a student model")
    with frozen(teacher), BNStatsLoss(teacher, cfg.first_bn_multiplier) as bn, seeded(seed, dev):
        check_targets(teacher, targets, cfg.image_size, dev)
        targets = torch.as_tensor(targets).long().to(dev)
        b, s = len(targets), cfg.image_size
        mean, std = mean_std(cfg, dev)
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn((b, 3, s, s), device=dev, requires_grad=True)   # normalised-space images
        opt = torch.optim.Adam([v], lr=cfg.lr, betas=(0.9, 0.999))
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations) if cfg.cosine_lr else None)
        best, best_loss, losses = v.detach().clone(), float("inf"), []
        every = log_every(cfg.iterations)
        for it in tqdm(range(cfg.iterations), disable=not progress, desc="DeepInversion", leave=False):
            xj = jitter_flip(v, gen, cfg.jitter, cfg.flip)
            loss, ce, loss_bn = inversion_loss(teacher, student, xj, targets, bn, cfg, mean, std)
            lv = loss.item()
            if lv < best_loss:        # the reference keeps the lowest-loss batch
                best_loss, best = lv, v.detach().clone()
            if it % every == 0 or it == cfg.iterations - 1:
                losses.append(round(lv, 5))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
        images = (best * std + mean).clamp(0, 1)
        with torch.no_grad():
            acc = (teacher(images).argmax(1) == targets).float().mean().item()
    return images.cpu(), {"loss": losses, "loss_first": losses[0], "loss_final": lv, "loss_best": best_loss,
                          "ce": ce.item(), "bn": loss_bn.item(), "teacher_acc": acc}
