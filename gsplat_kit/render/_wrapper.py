"""Autograd Functions over the native rasteriser ops (torch.ops.gsplat_kit, through _backend.ops()): CPU
tensors run the C++ kernels, CUDA tensors the CUDA kernels. Inputs are assumed validated by
`rasterization`."""
from __future__ import annotations

import torch

from gsplat_kit import _backend


def _c():
    return _backend.ops()


class _Projection(torch.autograd.Function):
    """means, (quats, scales | covars), viewmats, Ks -> radii, means2d, depths, conics, compensations."""

    @staticmethod
    def forward(ctx, means, quats, scales, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip):
        radii, means2d, depths, conics, comps = _c().projection_fwd(
            means, covars, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)
        ctx.save_for_backward(means, quats, scales, covars, viewmats, Ks, radii)
        ctx.args = (width, height, eps2d)
        ctx.mark_non_differentiable(radii)
        return radii, means2d, depths, conics, comps

    @staticmethod
    def backward(ctx, v_radii, v_means2d, v_depths, v_conics, v_comps):
        means, quats, scales, covars, viewmats, Ks, radii = ctx.saved_tensors
        width, height, eps2d = ctx.args
        v_means, v_covars, v_quats, v_scales = _c().projection_bwd(
            means, covars, quats, scales, viewmats, Ks, width, height, eps2d, radii,
            v_means2d.contiguous(), v_depths.contiguous(), v_conics.contiguous(),
            None if v_comps is None else v_comps.contiguous())
        grads = [v_means, v_quats, v_scales, v_covars]
        needs = ctx.needs_input_grad[:4]
        grads = [g if (need and g is not None and g.numel()) else None for g, need in zip(grads, needs)]
        return (*grads, None, None, None, None, None, None, None, None)


class _SphericalHarmonics(torch.autograd.Function):
    """colors[m] = SH(degree, dirs[m]) . coeffs[m % P]; dirs [M, 3] unnormalised, coeffs [P, K, 3]."""

    @staticmethod
    def forward(ctx, degree, dirs, coeffs):
        ctx.degree = degree
        ctx.save_for_backward(dirs, coeffs)
        return _c().sh_fwd(degree, dirs, coeffs)

    @staticmethod
    def backward(ctx, v_colors):
        dirs, coeffs = ctx.saved_tensors
        v_coeffs, v_dirs = _c().sh_bwd(ctx.degree, dirs, coeffs, v_colors.contiguous())
        return None, (v_dirs if ctx.needs_input_grad[1] else None), (v_coeffs if ctx.needs_input_grad[2] else None)


def isect_tiles(means2d, radii, depths, tile_size, tiles_w, tiles_h, width, height):
    """Tile binning: (tiles_per_gauss [C, N], isect_ids [M], flatten_ids [M], isect_offsets [C, th, tw])."""
    return _c().isect_tiles(means2d.detach().contiguous(), radii, depths.detach().contiguous(), tile_size, tiles_w,
                            tiles_h, width, height)


class _RasterizeToPixels(torch.autograd.Function):
    """Front-to-back compositing of the binned 2D Gaussians -> colours [C, H, W, D], alphas [C, H, W, 1]."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, width, height,
                tile_size, absgrad):
        render_colors, render_alphas, last_ids = _c().rasterize_fwd(
            means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, width, height, tile_size)
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids,
                              render_alphas, last_ids)
        ctx.args = (width, height, tile_size, absgrad)
        ctx.means2d = means2d  # densification reads means2d.absgrad
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):
        (means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, render_alphas,
         last_ids) = ctx.saved_tensors
        width, height, tile_size, absgrad = ctx.args
        v_means2d, v_abs, v_conics, v_colors, v_opacities = _c().rasterize_bwd(
            means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, width, height, tile_size,
            render_alphas, last_ids, v_render_colors.contiguous(), v_render_alphas.contiguous(), absgrad)
        if absgrad:
            ctx.means2d.absgrad = v_abs
        v_backgrounds = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            # colour += T_final * background
            v_backgrounds = (v_render_colors * (1.0 - render_alphas)).sum(dim=(1, 2))
        return v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, None, None, None, None, None, None
