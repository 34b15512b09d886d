"""Pure-PyTorch reference of the whole rasteriser, written for clarity, not speed.

It exists to check the native kernels: their forward values and (through autograd here) their
gradients must match it. It follows exactly the same rules as the kernels:

- projection: EWA splatting (Zwicker et al. 2001) as in 3DGS (Kerbl et al. 2023, eq. 5), with the
  Jacobian's x/z and y/z clamped to 1.3x the field of view, a low-pass dilation of `eps2d` pixels,
  and Mip-Splatting's opacity compensation sqrt(det(cov) / det(cov + eps2d I)) in antialiased mode;
- a Gaussian is culled (radii = 0) when its depth is outside [near, far], its dilated 2D covariance
  is degenerate, its 3-sigma box is within `radius_clip` pixels, or the box lies outside the image;
- a Gaussian is blended into every pixel of the 16x16 tiles its 3-sigma box touches, front to back
  by depth (as float32; ties by index), with alpha = min(0.99, o * exp(-sigma)); alpha < 1/255 is
  skipped, and a pixel stops before the Gaussian that would bring its transmittance below 1e-4.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gsplat_kit.scene.splats import quat_to_rotmat

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4

# Real spherical-harmonics basis constants (as in 3DGS's sh_utils / auxiliary.h).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Sigma = R S S^T R^T (3DGS eq. 6): [N, 3, 3]."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def covars_from_upper(covars: torch.Tensor) -> torch.Tensor:
    """[N, 6] upper triangle (xx, xy, xz, yy, yz, zz) -> [N, 3, 3]."""
    xx, xy, xz, yy, yz, zz = covars.unbind(-1)
    return torch.stack([xx, xy, xz, xy, yy, yz, xz, yz, zz], -1).reshape(covars.shape[:-1] + (3, 3))


def project(means, covars3d, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01, far_plane=1e10,
            radius_clip=0.0, antialiased=False):
    """World-space Gaussians -> per-camera 2D Gaussians.

    Returns radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3] (upper triangle
    of the inverse 2D covariance), compensations [C, N] (ones unless antialiased).
    """
    R, t = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]            # [C, 1, 3, 3], [C, 1, 3]
    p = (R @ means[None, :, :, None])[..., 0] + t                         # [C, N, 3] camera space
    cov_c = R @ covars3d[None] @ R.transpose(-1, -2)                       # [C, N, 3, 3]
    x, y, z = p.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Clamp the point's direction to 1.3x the view frustum before linearising (3DGS forward.cu).
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], -1).reshape(z.shape + (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)                                # [C, N, 2, 2]
    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * cov2d[..., 1, 0]
    valid = (det > 0) & (z >= near_plane) & (z <= far_plane)
    safe_det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
    if antialiased:
        compensations = torch.sqrt(torch.clamp_min(det_orig / safe_det, 0.0))
    else:
        compensations = torch.ones_like(det)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    depths = z
    # 3-sigma box of the ellipse, in whole pixels (not differentiated).
    with torch.no_grad():
        rx = torch.ceil(3.0 * torch.sqrt(torch.clamp_min(a, 0.0)))
        ry = torch.ceil(3.0 * torch.sqrt(torch.clamp_min(c, 0.0)))
        valid = valid & ((rx > radius_clip) | (ry > radius_clip))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = valid & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), 0.0).to(torch.int32)
    keep = valid[..., None]
    return (radii, torch.where(keep, means2d, 0.0), torch.where(valid, depths, 0.0),
            torch.where(keep, conics, 0.0), torch.where(valid, compensations, 0.0))


def spherical_harmonics(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Evaluates real SH of `degree` for unnormalised view directions. dirs [..., 3], coeffs [..., K, D]."""
    K = (degree + 1) ** 2
    if coeffs.shape[-2] < K:
        raise ValueError(f"sh_degree {degree} needs {K} coefficients, colors has {coeffs.shape[-2]}")
    x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
    basis = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        basis += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        basis += [
            SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy),
        ]
    return (torch.stack(basis, -1)[..., None] * coeffs[..., :K, :]).sum(-2)


def tile_ranges(means2d, radii, tile_size, tile_width, tile_height):
    """The [x0, x1) x [y0, y1) range of tiles each Gaussian's 3-sigma box touches: [C, N, 4] int."""
    r = radii.to(means2d.dtype)
    lo = torch.floor((means2d - r) / tile_size)
    hi = torch.ceil((means2d + r) / tile_size)
    x0 = lo[..., 0].clamp(0, tile_width)
    x1 = hi[..., 0].clamp(0, tile_width)
    y0 = lo[..., 1].clamp(0, tile_height)
    y1 = hi[..., 1].clamp(0, tile_height)
    return torch.stack([x0, x1, y0, y1], -1).long()


def rasterize_pixels(means2d, conics, colors, opacities, radii, depths, width, height, tile_size=16,
                     backgrounds=None):
    """Front-to-back alpha compositing per pixel. colors [C, N, D], opacities [C, N].

    Returns render_colors [C, H, W, D], render_alphas [C, H, W, 1].
    """
    C, N, D = colors.shape
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    ys, xs = torch.meshgrid(torch.arange(height, device=means2d.device), torch.arange(width, device=means2d.device), indexing="ij")
    px, py = xs.reshape(-1).to(means2d.dtype) + 0.5, ys.reshape(-1).to(means2d.dtype) + 0.5   # pixel centres
    tile_x, tile_y = xs.reshape(-1) // tile_size, ys.reshape(-1) // tile_size
    out_colors, out_alphas = [], []
    for ci in range(C):
        ranges = tile_ranges(means2d[ci], radii[ci], tile_size, tw, th)
        T = torch.ones(height * width, dtype=means2d.dtype, device=means2d.device)
        acc = torch.zeros(height * width, D, dtype=means2d.dtype, device=means2d.device)
        done = torch.zeros(height * width, dtype=torch.bool, device=means2d.device)
        visible = ((radii[ci] > 0).all(-1)).nonzero()[:, 0]
        # The kernels sort by depth rounded to float32 (it is part of a 64-bit key), ties by index.
        order = visible[torch.sort(depths[ci, visible].float(), stable=True).indices]
        for g in order.tolist():
            x0, x1, y0, y1 = ranges[g].tolist()
            in_tiles = (tile_x >= x0) & (tile_x < x1) & (tile_y >= y0) & (tile_y < y1)
            dx, dy = means2d[ci, g, 0] - px, means2d[ci, g, 1] - py
            a, b, c = conics[ci, g]
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = torch.clamp_max(opacities[ci, g] * torch.exp(-sigma), ALPHA_MAX)
            blend = in_tiles & ~done & (sigma >= 0) & (alpha >= ALPHA_MIN)
            next_T = T * (1 - alpha)
            stop = blend & (next_T < TRANSMITTANCE_MIN)
            blend = blend & ~stop
            done = done | stop
            w = torch.where(blend, alpha * T, 0.0)
            acc = acc + w[:, None] * colors[ci, g][None, :]
            T = torch.where(blend, next_T, T)
        if backgrounds is not None:
            acc = acc + T[:, None] * backgrounds[ci][None, :]
        out_colors.append(acc.reshape(height, width, D))
        out_alphas.append((1 - T).reshape(height, width, 1))
    return torch.stack(out_colors), torch.stack(out_alphas)


def rasterization_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                            near_plane=0.01, far_plane=1e10, radius_clip=0.0, eps2d=0.3, sh_degree=None,
                            tile_size=16, backgrounds=None, render_mode="RGB", rasterize_mode="classic",
                            covars=None, absgrad=False):
    """Same signature and outputs as `gsplat_kit.rasterization`, in plain PyTorch (slow)."""
    covars3d = covars_from_upper(covars) if covars is not None else covariance_3d(quats, scales)
    C = viewmats.shape[0]
    radii, means2d, depths, conics, comp = project(
        means, covars3d, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip,
        antialiased=rasterize_mode == "antialiased")
    opac = opacities[None].expand(C, -1)
    if rasterize_mode == "antialiased":
        opac = opac * comp
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = means[None] - campos[:, None]
        coeffs = colors if colors.dim() == 4 else colors[None].expand(C, -1, -1, -1)
        rgb = torch.clamp_min(spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)
    else:
        rgb = colors if colors.dim() == 3 else colors[None].expand(C, -1, -1)
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([rgb, depths[..., None]], -1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
    else:
        feats = rgb
    if backgrounds is not None and render_mode in ("RGB+D", "RGB+ED"):
        backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], -1)
    elif backgrounds is not None and render_mode in ("D", "ED"):
        backgrounds = None
    render_colors, render_alphas = rasterize_pixels(means2d, conics, feats, opac, radii, depths, width, height,
                                                    tile_size, backgrounds)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat([render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp_min(1e-10)], -1)
    meta = {"radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": opac,
            "width": width, "height": height, "tile_size": tile_size, "n_cameras": C}
    return render_colors, render_alphas, meta
