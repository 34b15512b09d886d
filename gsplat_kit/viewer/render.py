"""Server-side rendering for the viewer: one camera through `gsplat_kit.rasterization` to an RGB image."""
from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.render import rasterization
from gsplat_kit.scene.splats import Splats

RENDER_MODES = ("RGB", "Depth", "Alpha")

# A perceptual colour map for depth (anchors of matplotlib's "turbo", linearly interpolated).
_TURBO = np.array([
    [0.190, 0.072, 0.232], [0.276, 0.421, 0.891], [0.158, 0.736, 0.923], [0.197, 0.949, 0.595],
    [0.644, 0.990, 0.234], [0.933, 0.812, 0.230], [0.984, 0.493, 0.128], [0.816, 0.185, 0.018],
    [0.480, 0.016, 0.011]], dtype=np.float32)


@dataclasses.dataclass
class RenderSettings:
    mode: str = "RGB"                         # RGB | Depth | Alpha
    sh_degree: int = 3                        # clamped to what the scene holds
    scale_modifier: float = 1.0               # multiplies every Gaussian's extent
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB in [0, 1]


def intrinsics(fov_y: float, width: int, height: int) -> np.ndarray:
    """Pinhole K for a vertical field of view (viser's camera convention), square pixels."""
    f = 0.5 * height / math.tan(0.5 * fov_y)
    return np.array([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])


def colorize_depth(depth: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """Depth -> turbo colours, normalised by the 2nd..98th percentile of covered pixels."""
    valid = alpha > 0.5
    out = np.empty(depth.shape + (3,), np.float32)
    out[:] = np.asarray(background, np.float32)
    if valid.any():
        lo, hi = np.percentile(depth[valid], [2.0, 98.0])
        t = np.clip((depth - lo) / max(hi - lo, 1e-8), 0.0, 1.0) * (len(_TURBO) - 1)
        i0 = np.floor(t).astype(np.int64).clip(0, len(_TURBO) - 2)
        w = (t - i0)[..., None]
        cmap = _TURBO[i0] * (1 - w) + _TURBO[i0 + 1] * w
        out[valid] = cmap[valid]
    return out


class SplatRenderer:
    """Holds the activated Gaussians on the render device and renders camera poses.

    Activation (`Splats.activated`) happens once per scene, not per frame. Thread-safe: one render at a time.
    """

    def __init__(self, device: str | torch.device | None = None):
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as e:
            raise UserError(f"device {device!r}: {str(e).splitlines()[0]}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {device!r}: no CUDA device is visible")
        self._lock = threading.Lock()
        self._g = None
        self.num_gaussians = 0
        self.max_sh_degree = 0

    def set_splats(self, splats) -> None:
        """Activates raw splats (a dict or `Splats`) once, on the render device."""
        with torch.no_grad():
            s = (splats if isinstance(splats, Splats) else Splats(splats)).to(self.device, torch.float32)
            g = {k: v.contiguous() for k, v in s.activated().items()}
        with self._lock:
            self._g = g
            self.num_gaussians = s.num
            self.max_sh_degree = s.sh_degree

    @property
    def ready(self) -> bool:
        return self._g is not None

    def render(self, camtoworld: np.ndarray, fov_y: float, width: int, height: int,
               settings: RenderSettings) -> np.ndarray:
        """Returns a uint8 [H, W, 3] image of the camera (OpenCV camera-to-world, vertical fov in radians)."""
        return self.render_frame(camtoworld, fov_y, width, height, settings)[0]

    def render_frame(self, camtoworld: np.ndarray, fov_y: float, width: int, height: int,
                     settings: RenderSettings, empty_depth: float = 1e4) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 image [H, W, 3], camera-z depth [H, W] float32, `empty_depth` where nothing covers
        the pixel). The depth lets the page draw its own scene nodes (frusta) with correct occlusion."""
        with self._lock:
            g = self._g
            if g is None:
                raise RuntimeError("no scene loaded")
            dev = self.device
            viewmat = torch.as_tensor(np.linalg.inv(np.asarray(camtoworld, np.float64)), dtype=torch.float32,
                                      device=dev)[None]
            K = torch.as_tensor(intrinsics(fov_y, width, height), dtype=torch.float32, device=dev)[None]
            bg = torch.tensor([list(settings.background)], dtype=torch.float32, device=dev)
            sh = int(min(max(settings.sh_degree, 0), self.max_sh_degree))
            scales = g["scales"] if settings.scale_modifier == 1.0 else g["scales"] * float(settings.scale_modifier)
            mode = "ED" if settings.mode == "Depth" else "RGB+ED"   # one pass gives colour and depth
            with torch.no_grad():
                out, alphas, _ = rasterization(
                    g["means"], g["quats"], scales, g["opacities"], g["colors"], viewmat, K, int(width), int(height),
                    sh_degree=sh, backgrounds=None if mode == "ED" else bg, render_mode=mode)
            out = out[0].float().cpu().numpy()
            alphas = alphas[0, ..., 0].float().cpu().numpy()
        depth = out[..., -1]
        if settings.mode == "RGB":
            img = out[..., :3]
        elif settings.mode == "Depth":
            img = colorize_depth(depth, alphas, settings.background)
        else:
            img = np.repeat(alphas[..., None], 3, axis=-1)
        depth = np.where(alphas > 0.5, depth, np.float32(empty_depth)).astype(np.float32)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), depth
