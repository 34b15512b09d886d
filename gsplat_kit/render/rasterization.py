"""`rasterization`: the public entry point of the differentiable 3D Gaussian rasteriser.

Arguments and outputs follow gsplat 1.5 (`gsplat.rasterization`), so code written for gsplat runs
here: projection -> (spherical harmonics) -> tile binning -> sorted front-to-back alpha compositing.
"""
from __future__ import annotations

import math

import torch

from gsplat_kit.render._wrapper import _Projection, _RasterizeToPixels, _SphericalHarmonics, isect_tiles

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


def _check(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds,
              render_mode, rasterize_mode, covars, tile_size):
    tensors = {"means": means, "opacities": opacities, "colors": colors, "viewmats": viewmats, "Ks": Ks}
    if covars is None:
        tensors.update(quats=quats, scales=scales)
    else:
        tensors["covars"] = covars
    if backgrounds is not None:
        tensors["backgrounds"] = backgrounds
    for name, t in tensors.items():
        _check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
        _check(t.dtype in (torch.float32, torch.float64), f"{name} must be float32 or float64, got {t.dtype}")
        _check(t.dtype == means.dtype, f"{name} has dtype {t.dtype} but means has {means.dtype}: use one dtype")
        _check(t.device == means.device, f"{name} is on {t.device} but means is on {means.device}: use one device")
    _check(render_mode in RENDER_MODES, f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    _check(rasterize_mode in RASTERIZE_MODES, f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    _check(isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0,
           f"width and height must be positive ints, got {width!r} x {height!r}")
    # A CUDA block is one tile, one thread per pixel, in whole warps (csrc/splat/rasterize.cu).
    _check(isinstance(tile_size, int) and tile_size in (8, 16, 32), f"tile_size must be 8, 16 or 32, got {tile_size!r}")
    _check(means.dim() == 2 and means.shape[-1] == 3, f"means must be [N, 3], got {list(means.shape)}")
    N = means.shape[0]
    if covars is None:
        _check(quats.shape == (N, 4), f"quats must be [N, 4] = [{N}, 4], got {list(quats.shape)}")
        _check(scales.shape == (N, 3), f"scales must be [N, 3] = [{N}, 3], got {list(scales.shape)}")
    else:
        _check(covars.shape == (N, 6), f"covars must be [N, 6] (upper triangle), got {list(covars.shape)}")
    _check(opacities.shape == (N,), f"opacities must be [N] = [{N}], got {list(opacities.shape)}")
    _check(viewmats.dim() == 3 and viewmats.shape[1:] == (4, 4), f"viewmats must be [C, 4, 4], got {list(viewmats.shape)}")
    C = viewmats.shape[0]
    _check(C > 0, "viewmats must hold at least one camera")
    _check(Ks.shape == (C, 3, 3), f"Ks must be [C, 3, 3] = [{C}, 3, 3], got {list(Ks.shape)}")
    if sh_degree is not None:
        _check(isinstance(sh_degree, int) and 0 <= sh_degree <= 3, f"sh_degree must be an int in 0..3, got {sh_degree!r}")
        K = (sh_degree + 1) ** 2
        ok = (colors.dim() == 3 and colors.shape[0] == N) or (colors.dim() == 4 and colors.shape[:2] == (C, N))
        _check(ok and colors.shape[-1] == 3 and colors.shape[-2] >= K,
               f"with sh_degree={sh_degree}, colors must be [N, K, 3] or [C, N, K, 3] with K >= {K}, got {list(colors.shape)}")
    else:
        ok = (colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))
        _check(ok, f"colors must be [N, D] or [C, N, D] (or SH coefficients with sh_degree set), got {list(colors.shape)}")
    if backgrounds is not None:
        D = 3 if sh_degree is not None else colors.shape[-1]
        _check(backgrounds.shape == (C, D), f"backgrounds must be [C, D] = [{C}, {D}], got {list(backgrounds.shape)}")
    for name, t in (("viewmats", viewmats), ("Ks", Ks), ("means", means)):
        _check(bool(torch.isfinite(t).all()), f"{name} holds NaN or inf values")
    return N, C


def rasterization(
    means: torch.Tensor,                 # [N, 3] world-space centres
    quats: torch.Tensor,                 # [N, 4] rotations (w, x, y, z), any norm
    scales: torch.Tensor,                # [N, 3] standard deviations along the rotated axes
    opacities: torch.Tensor,             # [N] in [0, 1]
    colors: torch.Tensor,                # [N, D] or [C, N, D]; or SH coefficients [N, K, 3] / [C, N, K, 3]
    viewmats: torch.Tensor,              # [C, 4, 4] world-to-camera (OpenCV: x right, y down, z forward)
    Ks: torch.Tensor,                    # [C, 3, 3] pinhole intrinsics
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,            # cull splats whose 3-sigma box is at most this many pixels
    eps2d: float = 0.3,                  # low-pass dilation of the 2D covariance (pixels^2)
    sh_degree: int | None = None,        # evaluate `colors` as SH coefficients of this degree
    packed: bool = False,                # accepted for gsplat compatibility; the dense layout is used
    tile_size: int = 16,
    backgrounds: torch.Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",            # RGB | D (accumulated depth) | ED (expected depth) | RGB+D | RGB+ED
    sparse_grad: bool = False,           # accepted for gsplat compatibility; gradients are dense
    absgrad: bool = False,               # also accumulate |d loss / d means2d| into meta["means2d"].absgrad
    rasterize_mode: str = "classic",     # classic | antialiased (Mip-Splatting's opacity compensation)
    covars: torch.Tensor | None = None,  # [N, 6] upper-triangle 3D covariances, instead of quats/scales
):
    """Renders C views of N 3D Gaussians. Returns (render_colors [C, H, W, D'], render_alphas [C, H, W, 1], meta).

    D' is D (or 3 with SH) for "RGB", 1 for "D"/"ED", D+1 for "RGB+D"/"RGB+ED" (depth last). meta holds
    the intermediate results (radii [C, N, 2], means2d [C, N, 2], depths, conics, opacities, the tile
    binning) like gsplat's; call `meta["means2d"].retain_grad()` before backward to read view-space
    gradients for densification.
    """
    N, C = _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds,
                     render_mode, rasterize_mode, covars, tile_size)
    means = means.contiguous()
    viewmats, Ks = viewmats.contiguous(), Ks.contiguous()
    if covars is None:
        quats, scales = quats.contiguous(), scales.contiguous()
    else:
        quats = scales = None
        covars = covars.contiguous()
    radii, means2d, depths, conics, compensations = _Projection.apply(
        means, quats, scales, covars, viewmats, Ks, width, height, float(eps2d), float(near_plane), float(far_plane),
        float(radius_clip))
    opac = opacities[None].expand(C, N)
    if rasterize_mode == "antialiased":
        opac = opac * compensations

    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]                       # [C, 3]
        dirs = (means[None] - campos[:, None]).reshape(C * N, 3)
        K = (sh_degree + 1) ** 2
        coeffs = colors[..., :K, :].reshape(-1, K, 3).contiguous()            # [N or C*N, K, 3]
        rgb = _SphericalHarmonics.apply(sh_degree, dirs.contiguous(), coeffs).reshape(C, N, 3)
        rgb = torch.clamp_min(rgb + 0.5, 0.0)
    else:
        rgb = colors if colors.dim() == 3 else colors[None].expand(C, N, colors.shape[-1])

    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([rgb, depths[..., None]], -1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], -1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        backgrounds = None
    else:
        feats = rgb

    tiles_w, tiles_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids, isect_offsets = isect_tiles(
        means2d, radii, depths, tile_size, tiles_w, tiles_h, width, height)
    render_colors, render_alphas = _RasterizeToPixels.apply(
        means2d, conics.contiguous(), feats.contiguous(), opac.contiguous(),
        None if backgrounds is None else backgrounds.contiguous(), isect_offsets, flatten_ids, width, height,
        tile_size, absgrad)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp_min(1e-10)], -1)

    meta = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": opac, "tile_width": tiles_w, "tile_height": tiles_h,
        "tiles_per_gauss": tiles_per_gauss, "isect_ids": isect_ids, "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets, "width": width, "height": height, "tile_size": tile_size, "n_cameras": C,
    }
    return render_colors, render_alphas, meta
