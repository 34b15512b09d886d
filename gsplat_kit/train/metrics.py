"""Image-quality metrics for evaluation: PSNR, SSIM, and LPIPS when its weights are on disk.

LPIPS (Zhang et al. 2018, AlexNet variant) needs two weight files that cannot be downloaded here:
torchvision's AlexNet (`alexnet-owt-7be5be79.pth`) and the LPIPS linear heads (`alex.pth`, from the
`lpips` package). Put both in a folder and point GSPLAT_KIT_LPIPS_WEIGHTS (or `--lpips-weights`) at it;
otherwise metrics.json says why LPIPS is missing instead of inventing a number.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.safe_load import load_torch_data
from gsplat_kit.train.losses import psnr, ssim

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LIN_FILE = "alex.pth"
_CHANNELS = (64, 192, 384, 256, 256)
_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))   # AlexNet features up to each ReLU


def image_metrics(render: torch.Tensor, target: torch.Tensor) -> dict:
    """PSNR (dB) and SSIM of one [H, W, 3] render against its ground truth."""
    r = render.clamp(0, 1)
    return {"psnr": psnr(r, target), "ssim": float(ssim(r.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]))}


class LPIPS(nn.Module):
    """LPIPS distance: unit-normalised AlexNet activations, squared differences weighted by 1x1 heads."""

    def __init__(self):
        super().__init__()
        try:
            import torchvision
        except ModuleNotFoundError as e:  # not a declared dependency: it must be the build that matches torch
            raise UserError(f"LPIPS needs torchvision, the release that matches torch {torch.__version__} "
                            "(pip install torchvision, from the index that torch came from)") from e

        feats = torchvision.models.alexnet(weights=None).features
        self.slices = nn.ModuleList(nn.Sequential(*[feats[i] for i in range(a, b)]) for a, b in _SLICES)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def load_weights(self, folder: str):
        alex = load_torch_data(os.path.join(folder, ALEXNET_FILE), "LPIPS AlexNet weights")
        feats = {k[len("features."):]: v for k, v in alex.items() if k.startswith("features.")}
        for s, (a, b) in zip(self.slices, _SLICES):
            s.load_state_dict({f"{int(k.split('.')[0]) - a}.{k.split('.')[1]}": v for k, v in feats.items()
                               if a <= int(k.split(".")[0]) < b})
        lin = load_torch_data(os.path.join(folder, LIN_FILE), "LPIPS linear-head weights")
        for i, l in enumerate(self.lins):
            l.weight.copy_(lin[f"lin{i}.model.1.weight"])
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: [B, 3, H, W] in [0, 1] -> [B] distances."""
        x = ((x * 2 - 1) - self.shift) / self.scale
        y = ((y * 2 - 1) - self.shift) / self.scale
        d = 0
        for s, lin in zip(self.slices, self.lins):
            x, y = s(x), s(y)
            nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = d + lin((nx - ny) ** 2).mean(dim=(2, 3))
        return d.flatten()


def load_lpips(folder: str | None = None):
    """Returns (LPIPS module, None) when the weights are on disk, else (None, reason)."""
    folder = folder or os.environ.get("GSPLAT_KIT_LPIPS_WEIGHTS")
    if not folder:
        return None, ("LPIPS not computed: no weights on disk (set GSPLAT_KIT_LPIPS_WEIGHTS or --lpips-weights "
                      f"to a folder holding {ALEXNET_FILE} and {LIN_FILE})")
    missing = [f for f in (ALEXNET_FILE, LIN_FILE) if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        return None, f"LPIPS not computed: {folder} lacks {', '.join(missing)}"
    try:
        return LPIPS().load_weights(folder), None
    except Exception as e:  # a wrong or truncated file: report it, keep the other metrics
        return None, f"LPIPS not computed: could not load weights from {folder}: {e}"


def lpips_distance(model: LPIPS, render: torch.Tensor, target: torch.Tensor) -> float:
    dev = next(model.parameters()).device
    with torch.no_grad():
        return float(model(render.clamp(0, 1).permute(2, 0, 1)[None].to(dev), target.permute(2, 0, 1)[None].to(dev))[0])
