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

from .inversion import InversionConfig, image_priors, inversion_loss, invert  # noqa: F401 (re-exported)


@dataclass
class DeepInversionConfig(InversionConfig):
    lr: float = 0.05
    cosine_lr: bool = False             # the ImageNet script's schedule; CIFAR uses a constant lr

    RANGES = {"lr": dict(lo=0, lo_open=True)}


class PixelSource:
    """DeepInversion optimises the pixels themselves (in the teacher's normalised space), from N(0, 1)."""

    def __init__(self, targets: torch.Tensor, cfg: DeepInversionConfig):
        s = cfg.image_size
        self.lr = cfg.lr
        self.v = torch.randn((len(targets), 3, s, s), device=targets.device, requires_grad=True)

    def param_groups(self):
        return [{"params": [self.v], "lr": self.lr}]

    def images(self, gen, bn):
        return self.v


def invert_batch(teacher: nn.Module, targets: torch.Tensor, config: DeepInversionConfig | None = None,
                 seed: int = 0, progress: bool = False, student: nn.Module | None = None):
    """One DeepInversion batch. Returns (images [B,3,H,W] in [0,1] on the CPU, log dict)."""
    cfg = config or DeepInversionConfig()
    schedule = ((lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations))
                if cfg.cosine_lr else None)
    return invert(teacher, targets, cfg, lambda t, y, n_cls: PixelSource(y, cfg), seed, progress, student,
                  "DeepInversion", schedule)
