"""Gaussians initialised from SfM points (3DGS Sec. 5.1)."""
from __future__ import annotations

import math

import numpy as np
import torch

from gsplat_kit.common.errors import UserError

SH_C0 = 0.28209479177387814   # Y_0^0: the DC band maps colour c to (c - 0.5) / SH_C0


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    return sh * SH_C0 + 0.5


def knn_mean_sq_dist(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean squared distance of each point to its k nearest other points (scipy cKDTree)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 2:
        return np.ones(len(pts))
    kk = min(k, len(pts) - 1)
    d, _ = cKDTree(pts).query(pts, k=kk + 1)          # the first neighbour is the point itself
    return (d[:, 1:] ** 2).mean(axis=1)


def init_splats(points, colors, sh_degree: int = 3, init_opacity: float = 0.1, init_scale: float = 1.0,
                device="cpu") -> dict:
    """Splat parameters from points [P, 3] and colours [P, 3] in [0, 1].

    Colour -> SH DC; higher bands zero; scale = sqrt of the mean squared distance to the 3 nearest
    neighbours (as 3DGS's distCUDA2), isotropic, stored as a log; identity rotations; opacity
    `init_opacity` stored as a logit.
    """
    points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    colors = torch.as_tensor(np.asarray(colors), dtype=torch.float32)
    if points.dim() != 2 or points.shape[1] != 3 or len(points) == 0:
        raise UserError(f"need SfM points as a non-empty [P, 3] array, got shape {list(points.shape)}")
    if colors.shape != points.shape:
        raise UserError(f"point colours must match points {list(points.shape)}, got {list(colors.shape)}")
    n = len(points)
    dist2 = torch.as_tensor(knn_mean_sq_dist(points.numpy()), dtype=torch.float32).clamp_min(1e-7)
    scales = torch.log(torch.sqrt(dist2) * init_scale)[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    opac = torch.full((n,), math.log(init_opacity / (1 - init_opacity)))
    K = (sh_degree + 1) ** 2
    sh0 = rgb_to_sh(colors.clamp(0, 1))[:, None, :]
    shN = torch.zeros(n, max(K - 1, 0), 3)
    splats = {"means": points, "scales": scales, "quats": quats, "opacities": opac, "sh0": sh0, "shN": shN}
    # clone: the parameters must never alias the caller's arrays (Adam updates them in place)
    return {k: torch.nn.Parameter(v.to(device).clone().contiguous()) for k, v in splats.items()}
