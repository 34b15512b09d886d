// Per-pixel alpha compositing of one 2D Gaussian (3DGS eq. 3), forward and backward, and the tile
// geometry shared by binning and rasterisation. Both backends call exactly these functions.
#pragma once

#include "gk_common.h"

namespace gk {

// Range of tiles [x0, x1) x [y0, y1) that the Gaussian's 3-sigma box touches (clamped to the grid).
template <typename T> GK_HD void tile_range(T mx, T my, int32_t rx, int32_t ry, int tile_size, int tiles_w, int tiles_h,
                                            int& x0, int& x1, int& y0, int& y1) {
    T ts = T(tile_size);
    x0 = int(gk_min(gk_max(floor((mx - T(rx)) / ts), T(0)), T(tiles_w)));
    x1 = int(gk_min(gk_max(ceil((mx + T(rx)) / ts), T(0)), T(tiles_w)));
    y0 = int(gk_min(gk_max(floor((my - T(ry)) / ts), T(0)), T(tiles_h)));
    y1 = int(gk_min(gk_max(ceil((my + T(ry)) / ts), T(0)), T(tiles_h)));
}

// Sort key of one intersection: camera | tile | depth. Depths of visible Gaussians are positive, so
// their IEEE bits order like the values.
GK_HD uint64_t isect_key(int64_t camera, int64_t tile, float depth, int tile_bits) {
    union { float f; uint32_t u; } d;
    d.f = depth;
    return (uint64_t(camera) << (32 + tile_bits)) | (uint64_t(tile) << 32) | uint64_t(d.u);
}

// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = mean - pixel centre.
template <typename T> GK_HD T gauss_sigma(const T conic[3], T dx, T dy) {
    return T(0.5) * (conic[0] * dx * dx + conic[2] * dy * dy) + conic[1] * dx * dy;
}

// alpha of one splat at one pixel, or 0 when it is skipped (behind the ellipse's centre plane or fainter than 1/255).
template <typename T> GK_HD T splat_alpha(T opacity, T sigma, T& vis) {
    vis = gk_exp(-sigma);
    T alpha = gk_min(T(kAlphaMax), opacity * vis);
    return (sigma < T(0) || alpha < T(kAlphaMin)) ? T(0) : alpha;
}

// Backward through alpha = min(0.99, o exp(-sigma)) given dL/dalpha: accumulates the conic, mean and
// opacity gradients of this pixel. (When the cap is active, alpha does not depend on o or sigma.)
template <typename T> GK_HD void splat_alpha_vjp(T opacity, T vis, const T conic[3], T dx, T dy, T v_alpha, T v_conic[3],
                                                 T v_mean[2], T& v_opacity) {
    if (opacity * vis > T(kAlphaMax)) return;
    T v_sigma = -opacity * vis * v_alpha;
    v_conic[0] += T(0.5) * dx * dx * v_sigma;
    v_conic[1] += dx * dy * v_sigma;
    v_conic[2] += T(0.5) * dy * dy * v_sigma;
    v_mean[0] += v_sigma * (conic[0] * dx + conic[1] * dy);
    v_mean[1] += v_sigma * (conic[1] * dx + conic[2] * dy);
    v_opacity += vis * v_alpha;
}

}  // namespace gk
