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

// Widths of the sort key's fields (isect_key below): the fewest bits that hold every tile id and every
// camera id; the depth takes the low 32 bits. Binning on both backends and the op's checks use this.
struct IsectKeyBits {
    int tile, camera;
    GK_HD int total() const { return 32 + tile + camera; }
};
GK_HD int bits_for_ids(int64_t n) {
    int b = 0;
    while ((int64_t(1) << b) < n) ++b;
    return b;
}
GK_HD IsectKeyBits isect_key_bits(int64_t cameras, int64_t tiles_per_camera) {
    return {bits_for_ids(tiles_per_camera), bits_for_ids(cameras)};
}

// Sort key of one intersection: camera | tile | depth. Depths of visible Gaussians are positive, so
// their IEEE bits order like the values.
GK_HD uint64_t isect_key(int64_t camera, int64_t tile, float depth, int tile_bits) {
    union { float f; uint32_t u; } d;
    d.f = depth;
    return (uint64_t(camera) << (32 + tile_bits)) | (uint64_t(tile) << 32) | uint64_t(d.u);
}

// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = mean - pixel centre.
template <typename T> GK_HD T gauss_sigma(T a, T b, T c, T dx, T dy) {
    return 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;
}
template <typename T> GK_HD T gauss_sigma(const T conic[3], T dx, T dy) { return gauss_sigma(conic[0], conic[1], conic[2], dx, dy); }

// alpha of one splat at one pixel, or 0 when it is skipped (behind the ellipse's centre plane or
// fainter than 1/255); vis = exp(-sigma) is kept for the backward. (Returned by value: out-parameters
// on loop locals keep compilers from vectorising the CPU loops.) gauss_sigma and splat_alpha also take
// the CPU's float vectors (gk_common.h, simd): scalar constants and | rather than || for that.
template <typename T> struct SplatAlpha { T alpha, vis; };

template <typename T> GK_HD SplatAlpha<T> splat_alpha(T opacity, T sigma) {
    const T vis = gk_exp(-sigma);
    const T a = opacity * vis;
    const T alpha = a > kAlphaMax ? T{} + kAlphaMax : a;  // a NaN stays NaN
    return {((sigma < 0.f) | (alpha < kAlphaMin)) ? T{} : alpha, vis};
}

// Backward through alpha = min(0.99, o exp(-sigma)) given dL/dalpha: the conic, mean and opacity
// gradients of this pixel. (When the cap is active, alpha does not depend on o or sigma.)
template <typename T> struct SplatGrad { T conic[3], mean[2], opacity; };

template <typename T> GK_HD SplatGrad<T> splat_alpha_vjp(T opacity, T vis, const T conic[3], T dx, T dy, T v_alpha) {
    const auto capped = opacity * vis > kAlphaMax;  // bool, or a lane mask
    const T v_sigma = capped ? T{} : -opacity * vis * v_alpha;
    SplatGrad<T> g;
    g.conic[0] = 0.5f * dx * dx * v_sigma;
    g.conic[1] = dx * dy * v_sigma;
    g.conic[2] = 0.5f * dy * dy * v_sigma;
    g.mean[0] = v_sigma * (conic[0] * dx + conic[1] * dy);
    g.mean[1] = v_sigma * (conic[1] * dx + conic[2] * dy);
    g.opacity = capped ? T{} : vis * v_alpha;
    return g;
}

}  // namespace gk
