"""Differentiable rasterisation of 3D Gaussians (gsplat's conventions) over the native kernels."""
from gsplat_kit.render.rasterization import RASTERIZE_MODES, RENDER_MODES, rasterization

__all__ = ["rasterization", "RENDER_MODES", "RASTERIZE_MODES"]
