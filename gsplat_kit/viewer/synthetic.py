"""Synthetic Gaussian scenes for the viewer's tests and benchmark (no data or training needed)."""
from __future__ import annotations

import math

import numpy as np
import torch

from gsplat_kit.scene.splats import SH_C0
from gsplat_kit.viewer.source import CameraView


def sphere_splats(n: int = 4000, radius: float = 1.0, sh_degree: int = 0, seed: int = 0) -> dict:
    """Opaque Gaussians tiling a sphere, coloured by their normal (0.5 + 0.5 n): every direction differs."""
    g = torch.Generator().manual_seed(seed)
    # Fibonacci sphere: even coverage, so no holes show the background
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5 ** 0.5) * i
    normals = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)
    means = (normals * radius).float()
    spacing = radius * math.sqrt(4 * math.pi / n)
    # flat discs in the tangent plane: the third axis (local z) is aligned with the normal
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 3)
    axis = torch.cross(z, normals, dim=-1)
    s = axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    angle = torch.atan2(s[:, 0], (z * normals).sum(-1))
    axis = axis / s
    quats = torch.cat([torch.cos(angle / 2)[:, None], axis * torch.sin(angle / 2)[:, None]], -1).float()
    scales = torch.log(torch.tensor([0.7 * spacing, 0.7 * spacing, 0.05 * spacing])).expand(n, 3).clone()
    scales += 0.05 * torch.randn(n, 3, generator=g)
    rgb = (0.5 + 0.5 * normals).float()
    k = (sh_degree + 1) ** 2
    return {
        "means": means, "scales": scales.float(), "quats": quats,
        "opacities": torch.full((n,), 4.0),                       # sigmoid(4) = 0.98
        "sh0": ((rgb - 0.5) / SH_C0)[:, None, :],
        "shN": 0.1 * torch.randn(n, k - 1, 3, generator=g),
    }


def cloud_splats(n: int, seed: int = 0, sh_degree: int = 3, extent: float = 2.0) -> dict:
    """A trained-scene-like cloud for benchmarks: log-normal sizes, mixed opacities, full SH."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * extent
    # trained-scene-like statistics: a log-normal size with a long tail of big splats; the median shrinks
    # as n grows (1/300 of the extent at 100k), so the cube stays about as covered as a real capture
    scales = math.log(extent / 300 * (1e5 / n) ** (1 / 3)) + 0.8 * torch.randn(n, 3, generator=g)
    k = (sh_degree + 1) ** 2
    return {
        "means": means, "scales": scales, "quats": torch.randn(n, 4, generator=g),
        "opacities": 2.0 * torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.8,
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1,
    }


def look_at_view(eye, target, up, width: int, height: int, fov_y_deg: float, name: str = "view") -> CameraView:
    """An OpenCV camera at `eye` looking at `target` (x right, y down, z forward)."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    zc = target - eye
    zc /= np.linalg.norm(zc)
    xc = np.cross(zc, up)
    xc /= np.linalg.norm(xc)
    yc = np.cross(zc, xc)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([xc, yc, zc], 1)
    c2w[:3, 3] = eye
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    return CameraView(name, c2w, K, width, height)


def room_splats(n: int, seed: int = 0, sh_degree: int = 3) -> dict:
    """A capture-like scene for benchmarks: mostly opaque surface splats on the walls of a 4 m room and on
    a few objects inside it, plus 5 % semi-transparent floaters. Seen from inside, every pixel is covered
    and compositing stops early at surfaces, as in real reconstructions (a random cloud never does)."""
    g = torch.Generator().manual_seed(seed)
    n_float = n // 20
    n_obj = (n - n_float) // 4
    n_wall = n - n_float - n_obj
    # walls: pick a face, a point on it, and the face normal
    face = torch.randint(0, 6, (n_wall,), generator=g)
    axis, sign = face // 2, (face % 2) * 2 - 1
    p = (torch.rand(n_wall, 3, generator=g) * 2 - 1) * 2.0
    p[torch.arange(n_wall), axis] = sign.float() * 2.0
    nrm = torch.zeros(n_wall, 3)
    nrm[torch.arange(n_wall), axis] = -sign.float()
    # objects: spheres of radius 0.2..0.5
    centres = (torch.rand(8, 3, generator=g) * 2 - 1) * 1.3
    radii = 0.2 + 0.3 * torch.rand(8, generator=g)
    k = torch.randint(0, 8, (n_obj,), generator=g)
    d = torch.nn.functional.normalize(torch.randn(n_obj, 3, generator=g), dim=-1)
    q = centres[k] + d * radii[k, None]
    means = torch.cat([p, q, (torch.rand(n_float, 3, generator=g) * 2 - 1) * 1.8])
    normals = torch.cat([nrm, d, torch.nn.functional.normalize(torch.randn(n_float, 3, generator=g), dim=-1)])
    area = 6 * 16.0 + float((4 * math.pi * radii ** 2).sum())
    spacing = math.sqrt(area / (n - n_float))
    # discs in the tangent plane (local z along the normal), log-normal sizes around the spacing
    z = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    ax = torch.cross(z, normals, dim=-1)
    s = ax.norm(dim=-1, keepdim=True)
    ang = torch.atan2(s[:, 0], (z * normals).sum(-1))
    ax = torch.where(s > 1e-6, ax / s.clamp_min(1e-12), torch.tensor([1.0, 0.0, 0.0]))
    quats = torch.cat([torch.cos(ang / 2)[:, None], ax * torch.sin(ang / 2)[:, None]], -1)
    scales = torch.log(torch.tensor([spacing, spacing, 0.1 * spacing])) + 0.5 * torch.randn(n, 3, generator=g)
    opac = 2.5 + 1.5 * torch.randn(n, generator=g)
    opac[-n_float:] = -2.0 + torch.randn(n_float, generator=g)
    rgb = 0.5 + 0.4 * torch.sin(2.0 * means + torch.tensor([0.0, 2.0, 4.0]))
    kk = (sh_degree + 1) ** 2
    return {"means": means.float(), "scales": scales.float(), "quats": quats.float(), "opacities": opac.float(),
            "sh0": ((rgb - 0.5) / SH_C0)[:, None, :].float(), "shN": 0.05 * torch.randn(n, kk - 1, 3, generator=g)}
