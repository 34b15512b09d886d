"""A tiny synthetic scene for the training tests: known Gaussians rendered from a ring of cameras."""
import math
from dataclasses import dataclass

import numpy as np
import torch

from gsplat_kit import rasterization


@dataclass
class SynthView:
    name: str
    width: int
    height: int
    K: torch.Tensor
    viewmat: torch.Tensor
    image: torch.Tensor

    @property
    def camtoworld(self):
        return torch.linalg.inv(self.viewmat)

    def load_image(self):
        return self.image.numpy()


@dataclass
class SynthScene:
    train_views: list
    test_views: list
    points: np.ndarray
    points_rgb: np.ndarray
    scene_scale: float
    background: object = None


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """World-to-camera (OpenCV: x right, y down, z forward)."""
    eye, target, up = (torch.tensor(v, dtype=torch.float32) for v in (eye, target, up))
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(-up, z), dim=0)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return torch.linalg.inv(c2w)


def make_scene(n_views=10, n_gauss=300, width=64, height=48, test_every=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n_gauss, 3, generator=g) - 0.5) * 1.6
    rgb = torch.rand(n_gauss, 3, generator=g)
    scales = torch.full((n_gauss, 3), 0.08) * (0.5 + torch.rand(n_gauss, 3, generator=g))
    quats = torch.randn(n_gauss, 4, generator=g)
    opac = torch.full((n_gauss,), 0.8)
    K = torch.tensor([[60.0, 0, width / 2], [0, 60.0, height / 2], [0, 0, 1]])
    views = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        vm = look_at((3.5 * math.cos(a), 3.5 * math.sin(a), 1.0 + 0.3 * math.sin(3 * a)))
        with torch.no_grad():
            img, _, _ = rasterization(means, quats, scales, opac, rgb, vm[None], K[None], width, height)
        views.append(SynthView(f"view_{i:02d}.png", width, height, K, vm, img[0].clamp(0, 1)))
    test = [v for i, v in enumerate(views) if test_every and i % test_every == 0]
    train = [v for i, v in enumerate(views) if not (test_every and i % test_every == 0)]
    pts = (means + 0.03 * torch.randn(n_gauss, 3, generator=g)).numpy()
    cols = (rgb + 0.1 * torch.randn(n_gauss, 3, generator=g)).clamp(0, 1).numpy()
    return SynthScene(train, test, pts, cols, scene_scale=3.5 * 1.1)
