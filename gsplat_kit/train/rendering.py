"""Render splat dicts through `gsplat_kit.rasterization` for given cameras."""
from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def cpu_threads(requested: int = 0) -> int:
    """Threads for CPU training. On a shared machine, OpenMP threads that outnumber the free cores wait
    for each other at every barrier (measured on 2 busy cores: 1.6 s/step with 2 threads, 0.29 s with 1),
    so `0` takes the cores the 1-minute load average leaves free, at least one."""
    n = os.cpu_count() or 1
    if requested > 0:
        return requested
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(n, n - busy))


def sh_coeffs(splats: dict) -> torch.Tensor:
    return torch.cat([splats["sh0"], splats["shN"]], 1) if splats["shN"].shape[1] else splats["sh0"]


def max_sh_degree(splats: dict) -> int:
    K = splats["sh0"].shape[1] + splats["shN"].shape[1]
    return int(round(K ** 0.5)) - 1


def render(splats: dict, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, sh_degree: int,
           background: torch.Tensor | None = None, near_plane: float = 0.01, far_plane: float = 1e10,
           rasterize_mode: str = "classic", absgrad: bool = False):
    """One camera -> (rgb [1, H, W, 3], alpha [1, H, W, 1], meta). Parameters are activated here."""
    from gsplat_kit import rasterization

    dev = splats["means"].device
    bg = None if background is None else background.to(dev, torch.float32).reshape(1, 3)
    return rasterization(
        splats["means"], splats["quats"], torch.exp(splats["scales"]), torch.sigmoid(splats["opacities"]),
        sh_coeffs(splats), viewmat.to(dev, torch.float32)[None], K.to(dev, torch.float32)[None], int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, sh_degree=sh_degree, backgrounds=bg,
        rasterize_mode=rasterize_mode, absgrad=absgrad)


@torch.no_grad()
def render_view(splats: dict, view, sh_degree: int | None = None, background=None, **kw) -> torch.Tensor:
    """A scene View -> [H, W, 3] image in [0, 1]."""
    deg = max_sh_degree(splats) if sh_degree is None else sh_degree
    rgb, _, _ = render(splats, torch.as_tensor(view.viewmat), torch.as_tensor(view.K), view.width, view.height,
                       deg, background, **kw)
    return rgb[0].clamp(0, 1)
