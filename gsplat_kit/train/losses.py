"""Photometric losses: L1 and a fast SSIM (separable Gaussian window, all five moments in one conv)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_WINDOWS: dict = {}


def _gauss_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    key = (size, sigma, device, dtype)
    if key not in _WINDOWS:
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-x * x / (2 * sigma * sigma))
        _WINDOWS[key] = (g / g.sum()).to(device=device, dtype=dtype)
    return _WINDOWS[key]


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         padding: str = "same", reduce: bool = True) -> torch.Tensor:
    """SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), images [B, C, H, W] in [0, 1].

    The 2D Gaussian window is separable, so the five local moments (mu_x, mu_y, E[x^2], E[y^2], E[xy])
    are filtered with two 1D depthwise convolutions over one stacked tensor: O(k) instead of O(k^2) per
    pixel and two conv calls instead of five. padding="same" zero-pads like the 3DGS code
    (`valid` drops the border instead, like torchmetrics without padding).
    """
    if img1.shape != img2.shape or img1.dim() != 4:
        raise ValueError(f"ssim expects two [B, C, H, W] tensors of one shape, got {list(img1.shape)} and {list(img2.shape)}")
    C1, C2 = 0.01 ** 2, 0.03 ** 2
    B, C, H, W = img1.shape
    g = _gauss_1d(window_size, sigma, img1.device, img1.dtype)
    x = torch.cat([img1, img2, img1 * img1, img2 * img2, img1 * img2], dim=1)       # [B, 5C, H, W]
    pad = window_size // 2 if padding == "same" else 0
    k = 5 * C
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(k, 1, 1, window_size), padding=(0, pad), groups=k)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(k, 1, window_size, 1), padding=(pad, 0), groups=k)
    mu1, mu2, e11, e22, e12 = x.split(C, dim=1)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11, s22, s12 = e11 - mu11, e22 - mu22, e12 - mu12
    smap = ((2 * mu12 + C1) * (2 * s12 + C2)) / ((mu11 + mu22 + C1) * (s11 + s22 + C2))
    return smap.mean() if reduce else smap.mean(dim=(1, 2, 3))


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_lambda: float = 0.2):
    """(1 - lambda) * L1 + lambda * (1 - SSIM) on [B, H, W, 3] images (3DGS Eq. 7). Returns (loss, l1, ssim)."""
    r, t = render.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    l1 = (r - t).abs().mean()
    s = ssim(r, t)
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - s), l1, s


def psnr(render: torch.Tensor, target: torch.Tensor) -> float:
    mse = float(((render.clamp(0, 1) - target) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
