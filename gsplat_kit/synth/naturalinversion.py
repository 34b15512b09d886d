"""NaturalInversion (Kim et al., AAAI 2022): DeepInversion's losses, but the images come from a
one-to-one generator (a fresh generator per batch), refined by the Feature Transfer Pyramid (the
teacher's multi-scale feature maps of the generator's own output, decoded back to image space) and
scaled per image and channel by the learnable Adaptive Channel Scaling parameters; all three are
trained end to end.

Per iteration (the paper's Algorithm 1, as in kdst-team/NaturalInversion):
  x0 = G(z, y); x0 = jitter/flip(x0)
  f  = teacher's stage maps of x0 (no gradient)            -- feature transfer pyramid input
  x  = tanh(conv1x1(x0 + FTP(f))) * alpha                  -- alpha: [B,3,1,1], ACS
  loss = CE(T(jitter/flip(x)), y) + a_bn R_BN + a_tv R_TV + a_l2 R_l2
Defaults: batch 256, 2000 iterations, Adam lr 1e-3 (G), 5e-4 (FTP), 0.05 (ACS, init N(5,1)),
BN weight 10, TV(l2) 6e-3, l2 1.5e-5, z of 1024 dims + one-hot label, jitter 2 with flips.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import mean_std, model_device
from .bn_hooks import BNStatsLoss
from .inversion import InversionConfig, invert
from .priors import jitter_flip


@dataclass
class NaturalInversionConfig(InversionConfig):
    tv_l2_weight: float = 6e-3
    l2_weight: float = 1.5e-5
    flip: bool = True
    g_lr: float = 1e-3
    ftp_lr: float = 5e-4
    acs_lr: float = 0.05
    acs_init_mean: float = 5.0
    acs_init_std: float = 1.0
    latent_dim: int = 1024
    gen_channels: int = 128
    use_ftp: bool = True                # ablations: generator only / without ACS
    use_acs: bool = True

    RANGES = {"g_lr": dict(lo=0, lo_open=True), "ftp_lr": dict(lo=0, lo_open=True),
              "acs_lr": dict(lo=0, lo_open=True), "acs_init_std": dict(lo=0), "latent_dim": dict(lo=1),
              "gen_channels": dict(lo=2)}


class Generator(nn.Module):
    """z ++ one-hot(y) -> linear -> C x s/4 x s/4 -> two (upsample, conv, BN, LeakyReLU) stages -> 3 x s x s.
    Its BNs use batch statistics throughout: it only ever makes the one batch it is trained for."""

    def __init__(self, latent_dim: int, num_classes: int, image_size: int = 32, channels: int = 128):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 for the generator, got {image_size}")
        self.num_classes, self.init_size, self.channels = num_classes, image_size // 4, channels
        self.fc = nn.Linear(latent_dim + num_classes, channels * self.init_size ** 2)
        c = channels
        self.body = nn.Sequential(
            nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(c, c // 2, 3, 1, 1), nn.BatchNorm2d(c // 2),
            nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c // 2, 3, 3, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1))
        h = h.view(len(z), self.channels, self.init_size, self.init_size)
        # channels-last: oneDNN's NHWC convolutions, measured ~20% faster for this generator on the CPU
        return self.body(h.contiguous(memory_format=torch.channels_last))


class Pointwise(nn.Module):
    """A 1x1 convolution as a matrix product over the channel axis: the same function and initialisation
    as ``nn.Conv2d(cin, cout, 1)``, but its backward is a plain GEMM (PyTorch's CPU 1x1-conv backward was
    measured 5-10x slower at these shapes, a third of a NaturalInversion step)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.lin = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.movedim(1, -1)).movedim(-1, 1)


class FeatureTransferPyramid(nn.Module):
    """Decodes the teacher's stage maps (finest first, e.g. 16x32x32, 32x16x16, 64x8x8) top-down:
    from the coarsest, repeatedly upsample, 1x1-project to the next finer width, add that map, 3x3 conv;
    then 1x1 to RGB, add to the generator's image, 1x1 RGB mix and tanh."""

    def __init__(self, channels: list[int]):
        super().__init__()
        if len(channels) < 1:
            raise ValueError("the Feature Transfer Pyramid needs at least one teacher feature map")
        self.proj = nn.ModuleList(Pointwise(channels[k + 1], channels[k]) for k in range(len(channels) - 1))
        self.fuse = nn.ModuleList(nn.Conv2d(channels[k], channels[k], 3, 1, 1) for k in range(len(channels) - 1))
        self.to_rgb = Pointwise(channels[0], 3)
        self.mix = Pointwise(3, 3)

    def forward(self, x: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
        out = maps[-1]
        for k in range(len(maps) - 2, -1, -1):
            up = F.interpolate(out, size=maps[k].shape[-2:], mode="nearest")
            out = self.fuse[k](self.proj[k](up) + maps[k])
        rgb = self.to_rgb(out)
        if rgb.shape[-2:] != x.shape[-2:]:
            rgb = F.interpolate(rgb, size=x.shape[-2:], mode="nearest")
        return torch.tanh(self.mix(x + rgb))


def stage_maps(teacher: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The teacher's multi-scale feature maps, finest first (``forward_features(x)[0]``)."""
    ff = getattr(teacher, "forward_features", None)
    if ff is None:
        raise ValueError(f"{type(teacher).__name__} has no forward_features(x) -> (stage maps, ...): the "
                         "Feature Transfer Pyramid needs the teacher's multi-scale maps (or set use_ftp=False)")
    maps = ff(x)[0]
    return sorted(maps, key=lambda m: -m.shape[-1])


class NaturalInversionBatch(nn.Module):
    """The trainable parts for one batch: generator, Feature Transfer Pyramid, ACS parameters, and the
    fixed latent codes. ``forward(gen)`` makes the batch's images in the teacher's normalised space."""

    def __init__(self, teacher: nn.Module, targets: torch.Tensor, cfg: NaturalInversionConfig, num_classes: int):
        super().__init__()
        dev = model_device(teacher)
        s = cfg.image_size
        self.cfg, self.teacher_ref = cfg, [teacher]     # a list: the teacher is not a sub-module
        self.register_buffer("targets", targets)
        self.register_buffer("mean", mean_std(cfg, dev)[0])
        self.register_buffer("std", mean_std(cfg, dev)[1])
        self.generator = Generator(cfg.latent_dim, num_classes, s, cfg.gen_channels).to(
            memory_format=torch.channels_last)
        self.ftp = None
        if cfg.use_ftp:
            with torch.no_grad():
                chans = [m.shape[1] for m in stage_maps(teacher, torch.zeros(2, 3, s, s, device=dev))]
            self.ftp = FeatureTransferPyramid(chans)
        if cfg.use_acs:   # per image and channel, N(5, 1) as in the reference
            alpha = torch.empty((len(targets), 3, 1, 1)).normal_(cfg.acs_init_mean, cfg.acs_init_std)
        else:             # the "w/o ACS" ablation: the tanh output as it is
            alpha = torch.ones((len(targets), 3, 1, 1))
        self.alpha = nn.Parameter(alpha, requires_grad=cfg.use_acs)
        self.register_buffer("z", torch.randn((len(targets), cfg.latent_dim)))
        self.to(dev)

    def param_groups(self):
        cfg = self.cfg
        groups = [{"params": list(self.generator.parameters()), "lr": cfg.g_lr}]
        if self.ftp is not None:
            groups.append({"params": list(self.ftp.parameters()), "lr": cfg.ftp_lr})
        if cfg.use_acs:
            groups.append({"params": [self.alpha], "lr": cfg.acs_lr})
        return groups

    def forward(self, gen: torch.Generator, bn: BNStatsLoss | None = None) -> torch.Tensor:
        cfg = self.cfg
        x0 = jitter_flip(self.generator(self.z, self.targets), gen, cfg.jitter, cfg.flip)
        if self.ftp is not None:
            # the pyramid's input is a fixed reading of the current image: no gradient, and its BN
            # statistics are not part of the loss, so the BN hooks skip this pass
            with torch.no_grad(), (bn.paused() if bn is not None else contextlib.nullcontext()):
                maps = stage_maps(self.teacher_ref[0], x0.detach() * self.std + self.mean)
            x = self.ftp(x0, maps)
        else:
            x = torch.tanh(x0)
        return x * self.alpha            # Adaptive Channel Scaling

    def images(self, gen: torch.Generator, bn: BNStatsLoss) -> torch.Tensor:
        return self(gen, bn)


def invert_batch(teacher: nn.Module, targets: torch.Tensor, config: NaturalInversionConfig | None = None,
                 seed: int = 0, progress: bool = False, student: nn.Module | None = None):
    """One NaturalInversion batch (a fresh generator, pyramid and ACS for it).
    Returns (images [B,3,H,W] in [0,1] on the CPU, log dict)."""
    cfg = config or NaturalInversionConfig()
    return invert(teacher, targets, cfg, lambda t, y, n_cls: NaturalInversionBatch(t, y, cfg, n_cls), seed,
                  progress, student, "NaturalInversion")
