// Rasterisation on the CPU: OpenMP over tiles; inside a tile, the tile's Gaussians in depth order and
// the tile's pixels in the inner loop (structure-of-arrays, so the per-pixel math vectorises).
// The per-pixel math is csrc/include/gk_blend.h, shared with rasterize.cu.
#include <algorithm>
#include <vector>

#include "gk_blend.h"
#include "kernels.h"

namespace gk {

namespace {

struct TileView {
    int64_t cam, index, start, end;  // tile index within the camera; its run [start, end) of intersections
    int x0, y0, w, h;                // pixel rectangle
};

TileView tile_view(const TileGrid& g, int64_t t, const int32_t* isect_offsets, int64_t n_isects) {
    const int64_t per_cam = int64_t(g.tiles_w) * g.tiles_h;
    TileView v;
    v.cam = t / per_cam;
    v.index = t % per_cam;
    v.start = isect_offsets[t];
    v.end = (t + 1 < int64_t(g.C) * per_cam) ? isect_offsets[t + 1] : n_isects;
    v.x0 = int(v.index % g.tiles_w) * g.tile_size;
    v.y0 = int(v.index / g.tiles_w) * g.tile_size;
    v.w = std::min(g.tile_size, g.width - v.x0);
    v.h = std::min(g.tile_size, g.height - v.y0);
    return v;
}

}  // namespace

template <typename T>
void rasterize_fwd_cpu(const TileGrid& g, int D, const T* means2d, const T* conics, const T* colors, const T* opacities,
                       const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                       T* render_colors, T* render_alphas, int32_t* last_ids) {
    const int64_t n_tiles = int64_t(g.C) * g.tiles_w * g.tiles_h;
    const int TP = g.tile_size * g.tile_size;
#pragma omp parallel
    {
        std::vector<T> px(TP), py(TP), trans(TP), acc(size_t(D) * TP);
        std::vector<int32_t> last(TP);
        std::vector<uint8_t> done(TP);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tiles; ++t) {
            TileView tv = tile_view(g, t, isect_offsets, n_isects);
            const int P = tv.w * tv.h;
            for (int p = 0; p < P; ++p) {
                px[p] = T(tv.x0 + p % tv.w) + T(0.5);
                py[p] = T(tv.y0 + p / tv.w) + T(0.5);
                trans[p] = T(1);
                last[p] = -1;
                done[p] = 0;
            }
            std::fill(acc.begin(), acc.begin() + size_t(D) * P, T(0));
            int active = P;
            for (int64_t k = tv.start; k < tv.end && active > 0; ++k) {
                const int64_t gid = flatten_ids[k];
                const T mx = means2d[gid * 2], my = means2d[gid * 2 + 1];
                const T* conic = conics + gid * 3;
                const T opac = opacities[gid];
                const T* col = colors + gid * D;
                for (int p = 0; p < P; ++p) {
                    if (done[p]) continue;
                    T vis;
                    const T alpha = splat_alpha(opac, gauss_sigma(conic, mx - px[p], my - py[p]), vis);
                    if (alpha == T(0)) continue;
                    const T next_T = trans[p] * (T(1) - alpha);
                    if (next_T < T(kTransmittanceMin)) {  // this splat would make the pixel opaque: stop before it
                        done[p] = 1;
                        --active;
                        continue;
                    }
                    const T w = alpha * trans[p];
                    for (int d = 0; d < D; ++d) acc[size_t(d) * P + p] += w * col[d];
                    trans[p] = next_T;
                    last[p] = int32_t(k);
                }
            }
            for (int p = 0; p < P; ++p) {
                const int64_t pix = (tv.cam * g.height + tv.y0 + p / tv.w) * int64_t(g.width) + tv.x0 + p % tv.w;
                for (int d = 0; d < D; ++d)
                    render_colors[pix * D + d] = acc[size_t(d) * P + p] + (backgrounds ? trans[p] * backgrounds[tv.cam * D + d] : T(0));
                render_alphas[pix] = T(1) - trans[p];
                last_ids[pix] = last[p];
            }
        }
    }
}

template <typename T>
void rasterize_bwd_cpu(const TileGrid& g, int D, const T* means2d, const T* conics, const T* colors, const T* opacities,
                       const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                       const T* render_alphas, const int32_t* last_ids, const T* v_render_colors, const T* v_render_alphas,
                       T* v_means2d, T* v_means2d_abs, T* v_conics, T* v_colors, T* v_opacities) {
    const int64_t n_tiles = int64_t(g.C) * g.tiles_w * g.tiles_h;
    const int TP = g.tile_size * g.tile_size;
    // Per-intersection gradients: each belongs to exactly one tile, so tiles never collide.
    const int stride = 2 + 2 + 3 + 1 + D;  // mean2d, |mean2d|, conic, opacity, colour
    std::vector<T> buf(size_t(n_isects) * stride, T(0));
#pragma omp parallel
    {
        std::vector<T> px(TP), py(TP), trans(TP), t_final(TP), v_a(TP), bg_dot(TP), behind(size_t(D) * TP), v_out(size_t(D) * TP);
        std::vector<int32_t> last(TP);
        std::vector<T> v_col(D);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tiles; ++t) {
            TileView tv = tile_view(g, t, isect_offsets, n_isects);
            const int P = tv.w * tv.h;
            int64_t k_max = -1;
            for (int p = 0; p < P; ++p) {
                const int64_t pix = (tv.cam * g.height + tv.y0 + p / tv.w) * int64_t(g.width) + tv.x0 + p % tv.w;
                px[p] = T(tv.x0 + p % tv.w) + T(0.5);
                py[p] = T(tv.y0 + p / tv.w) + T(0.5);
                t_final[p] = trans[p] = T(1) - render_alphas[pix];
                v_a[p] = v_render_alphas[pix];
                last[p] = last_ids[pix];
                k_max = std::max<int64_t>(k_max, last[p]);
                T dot = 0;
                for (int d = 0; d < D; ++d) {
                    v_out[size_t(d) * P + p] = v_render_colors[pix * D + d];
                    behind[size_t(d) * P + p] = 0;
                    if (backgrounds) dot += backgrounds[tv.cam * D + d] * v_render_colors[pix * D + d];
                }
                bg_dot[p] = dot;
            }
            // Back to front from the last splat any pixel blended, undoing the transmittance as we go.
            for (int64_t k = k_max; k >= tv.start; --k) {
                const int64_t gid = flatten_ids[k];
                const T mx = means2d[gid * 2], my = means2d[gid * 2 + 1];
                const T* conic = conics + gid * 3;
                const T opac = opacities[gid];
                const T* col = colors + gid * D;
                T v_mean[2] = {0, 0}, v_abs[2] = {0, 0}, v_con[3] = {0, 0, 0}, v_op = 0;
                std::fill(v_col.begin(), v_col.end(), T(0));
                for (int p = 0; p < P; ++p) {
                    if (k > last[p]) continue;
                    const T dx = mx - px[p], dy = my - py[p];
                    T vis;
                    const T alpha = splat_alpha(opac, gauss_sigma(conic, dx, dy), vis);
                    if (alpha == T(0)) continue;
                    const T ra = T(1) / (T(1) - alpha);
                    trans[p] *= ra;  // transmittance in front of this splat
                    const T fac = alpha * trans[p];
                    T v_alpha = 0;
                    for (int d = 0; d < D; ++d) {
                        const T vo = v_out[size_t(d) * P + p];
                        v_col[d] += fac * vo;
                        v_alpha += (col[d] * trans[p] - behind[size_t(d) * P + p] * ra) * vo;
                        behind[size_t(d) * P + p] += col[d] * fac;
                    }
                    v_alpha += t_final[p] * ra * (v_a[p] - bg_dot[p]);
                    T v_m[2] = {0, 0};
                    splat_alpha_vjp(opac, vis, conic, dx, dy, v_alpha, v_con, v_m, v_op);
                    v_mean[0] += v_m[0];
                    v_mean[1] += v_m[1];
                    v_abs[0] += v_m[0] < 0 ? -v_m[0] : v_m[0];
                    v_abs[1] += v_m[1] < 0 ? -v_m[1] : v_m[1];
                }
                T* b = buf.data() + size_t(k) * stride;
                b[0] = v_mean[0]; b[1] = v_mean[1]; b[2] = v_abs[0]; b[3] = v_abs[1];
                b[4] = v_con[0]; b[5] = v_con[1]; b[6] = v_con[2]; b[7] = v_op;
                for (int d = 0; d < D; ++d) b[8 + d] = v_col[d];
            }
        }
    }
    // Sum per Gaussian, in intersection order (deterministic).
    for (int64_t k = 0; k < n_isects; ++k) {
        const int64_t gid = flatten_ids[k];
        const T* b = buf.data() + size_t(k) * stride;
        v_means2d[gid * 2] += b[0]; v_means2d[gid * 2 + 1] += b[1];
        if (v_means2d_abs) { v_means2d_abs[gid * 2] += b[2]; v_means2d_abs[gid * 2 + 1] += b[3]; }
        v_conics[gid * 3] += b[4]; v_conics[gid * 3 + 1] += b[5]; v_conics[gid * 3 + 2] += b[6];
        v_opacities[gid] += b[7];
        for (int d = 0; d < D; ++d) v_colors[gid * D + d] += b[8 + d];
    }
}

#define GK_INSTANTIATE(T)                                                                                          \
    template void rasterize_fwd_cpu<T>(const TileGrid&, int, const T*, const T*, const T*, const T*, const T*,     \
                                       const int32_t*, const int32_t*, int64_t, T*, T*, int32_t*);                 \
    template void rasterize_bwd_cpu<T>(const TileGrid&, int, const T*, const T*, const T*, const T*, const T*,     \
                                       const int32_t*, const int32_t*, int64_t, const T*, const int32_t*, const T*, \
                                       const T*, T*, T*, T*, T*, T*);
GK_INSTANTIATE(float)
GK_INSTANTIATE(double)
#undef GK_INSTANTIATE

}  // namespace gk
