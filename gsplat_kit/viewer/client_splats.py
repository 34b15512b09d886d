"""Client-side (WebGL) splatting: the Gaussians converted to viser's splat format, sent in chunks.

The browser sorts and blends the splats itself, so the server needs no GPU. Large scenes are cut to a
budget of the most visible Gaussians (opacity x projected area) and sent as several nodes, so the
page stays responsive while the data streams in; the server-side path always renders all of them.
"""
from __future__ import annotations

import numpy as np
import torch

SH_C0 = 0.28209479177387814  # degree-0 real SH constant: colour = SH_C0 * sh0 + 0.5


def select_for_client(splats: dict, budget: int) -> torch.Tensor | None:
    """Indices of the `budget` most visible Gaussians, or None when all fit."""
    n = splats["means"].shape[0]
    if budget <= 0 or n <= budget:
        return None
    with torch.no_grad():
        # a Gaussian's screen footprint grows with the product of its two largest axes
        s = splats["scales"].float()
        area = torch.exp(s.sum(-1) - s.min(-1).values)
        score = torch.sigmoid(splats["opacities"].float()) * area
        return torch.topk(score, budget, sorted=False).indices.sort().values


def client_buffers(splats: dict, scale_modifier: float = 1.0, budget: int = 0):
    """Returns numpy (centers [M,3], covariances [M,3,3], rgbs [M,3], opacities [M,1]) for viser."""
    idx = select_for_client(splats, budget)
    with torch.no_grad():
        take = (lambda t: t.detach().float().cpu()) if idx is None else (lambda t: t.detach().float().cpu()[idx])
        means, quats, log_scales = take(splats["means"]), take(splats["quats"]), take(splats["scales"])
        sh0, opac = take(splats["sh0"]), take(splats["opacities"])
        R = _quat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))
        s = torch.exp(log_scales) * float(scale_modifier)
        M = R * s[:, None, :]                     # R diag(s)
        cov = M @ M.transpose(1, 2)               # R S S^T R^T
        rgb = (SH_C0 * sh0.reshape(-1, 3) + 0.5).clamp(0.0, 1.0)
        alpha = torch.sigmoid(opac)[:, None]
    return means.numpy(), cov.numpy(), rgb.numpy(), alpha.numpy()


def _quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def chunks(n: int, size: int):
    """[start, stop) ranges that cover n items in pieces of at most `size`."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]
