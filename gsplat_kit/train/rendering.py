"""Render splat dicts through `gsplat_kit.rasterization` for given cameras."""
from __future__ import annotations

import os

import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.render import rasterization
from gsplat_kit.scene.splats import Splats
from gsplat_kit.train.config import DEVICE_PATTERN


def resolve_device(name: str = "auto", flag: str = "--device") -> torch.device:
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise UserError(f"{flag} {name!r}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {name}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def cpu_threads(requested: int = 0) -> int:
    """Threads for CPU training. OpenMP threads that outnumber the free cores wait for each other at every
    barrier while other jobs hold the cores, so `0` takes the cores the 1-minute load average leaves free,
    at least one (BENCHMARKS.md, "training: threads", has figures)."""
    n = os.cpu_count() or 1
    if requested > 0:
        return requested
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(n, n - busy))


def render(splats: dict, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, sh_degree: int,
           background: torch.Tensor | None = None, near_plane: float = 0.01, far_plane: float = 1e10,
           rasterize_mode: str = "classic", absgrad: bool = False):
    """One camera -> (rgb [1, H, W, 3], alpha [1, H, W, 1], meta). Parameters are activated here."""
    dev = splats["means"].device
    bg = None if background is None else background.to(dev, torch.float32).reshape(1, 3)
    a = Splats(splats).activated()
    return rasterization(
        a["means"], a["quats"], a["scales"], a["opacities"], a["colors"],
        viewmat.to(dev, torch.float32)[None], K.to(dev, torch.float32)[None], int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, sh_degree=sh_degree, backgrounds=bg,
        rasterize_mode=rasterize_mode, absgrad=absgrad)


@torch.no_grad()
def render_view(splats: dict, view, sh_degree: int | None = None, background=None, **kw) -> torch.Tensor:
    """A scene View -> [H, W, 3] image in [0, 1]."""
    deg = Splats(splats).sh_degree if sh_degree is None else sh_degree
    rgb, _, _ = render(splats, torch.as_tensor(view.viewmat), torch.as_tensor(view.K), view.width, view.height,
                       deg, background, **kw)
    return rgb[0].clamp(0, 1)
