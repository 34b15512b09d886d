// Rasterisation on the CPU: OpenMP over tiles; inside a tile, the tile's Gaussians in depth order and
// the tile's pixels in the inner loop, one tile row (tile_size pixels) at a time, structure-of-arrays.
// The per-pixel math is csrc/include/gk_blend.h, shared with rasterize.cu.
//
// Row culling: a splat can only reach alpha >= 1/255 where sigma <= ln(255 o), an ellipse whose
// vertical extent is sqrt(2 ln(255 o) cov_yy). Rows beyond it (plus a pixel of margin) are skipped:
// they would evaluate to alpha = 0 anyway, so the result is the same, only faster. Rows whose pixels
// have all stopped are skipped too.
//
// Compiled once per instruction set (csrc/cpu_isa.h): everything here is in gk::isa_<set>.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../cpu_isa.h"
#include "gk_blend.h"
#include "kernels.h"

#ifndef GK_CPU_ISA
#error "compiled once per instruction set by setup.py, with -DGK_CPU_ISA=<set> (csrc/cpu_isa.h)"
#endif

namespace gk::GK_CPU_ISA_NS {

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

// The splats of a tile are scattered over the per-Gaussian arrays (depth order): their data is fetched
// kPrefetch intersections ahead, so that the loads of big scenes do not wait on memory.
constexpr int kPrefetch = 8;
template <typename T>
inline void prefetch_splat(int64_t gid, int D, const T* means2d, const T* conics, const T* colors, const T* opacities) {
    __builtin_prefetch(means2d + gid * 2);
    __builtin_prefetch(conics + gid * 3);
    __builtin_prefetch(colors + gid * D);
    __builtin_prefetch(opacities + gid);
}

// Rows [r0, r1] of the tile that the splat can reach with alpha >= 1/255; r0 > r1 when none.
template <typename T> void reachable_rows(const T conic[3], T opacity, T my, const TileView& tv, int& r0, int& r1) {
    r0 = 0;
    r1 = tv.h - 1;
    const T level = std::log(opacity * T(255));
    if (!(level > T(0))) {  // opacity <= 1/255 (or NaN): alpha < 1/255 everywhere
        r0 = 1, r1 = 0;
        return;
    }
    const T det = conic[0] * conic[2] - conic[1] * conic[1];
    if (!(det > T(0))) return;
    const T ext = std::sqrt(T(2) * level * conic[0] / det) + T(1);  // cov_yy = a / det
    if (!std::isfinite(ext)) return;
    const T lo = my - ext - T(tv.y0) - T(0.5), hi = my + ext - T(tv.y0) - T(0.5);
    r0 = std::max(0, int(std::floor(lo)));
    r1 = std::min(tv.h - 1, int(std::ceil(hi)));
}

// The lanes the row loops below step over, so that each loop is written once: one pixel (any scalar type,
// any tile size), or kLanes float pixels in a GCC vector (gk_common.h, simd) when the tile row is whole
// vectors. GCC leaves a per-pixel loop of this math scalar (see BENCHMARKS.md), hence the vectors; the
// gk_blend.h functions take both. Masks: bool-valued ints per pixel, -1/0 lanes per vector; both work
// with &, ~ and ?: as the loops use them.
template <typename T> struct ScalarLanes {
    using V = T;
    using Mask = int;  // also a count of true lanes, as a sum of masks
    static constexpr int kWidth = 1;
    static V load(const T* p) { return *p; }
    static int32_t load(const int32_t* p) { return *p; }
    static void store(T* p, V v) { *p = v; }
    static void store(int32_t* p, int32_t v) { *p = v; }
    static V broadcast(T x) { return x; }
    static int32_t broadcast(int32_t x) { return x; }
    static int count(Mask stops) { return stops; }
    static T sum(V v) { return v; }
    static V abs(V v) { return std::abs(v); }
};
struct VectorLanes {
    using V = simd::VF;
    using Mask = simd::VI;  // a sum of masks counts -1 per true lane
    static constexpr int kWidth = simd::kLanes;
    static V load(const float* p) { return simd::load(p); }
    static simd::VI load(const int32_t* p) { return simd::load(p); }
    static void store(float* p, V v) { simd::store(p, v); }
    static void store(int32_t* p, simd::VI v) { simd::store(p, v); }
    static V broadcast(float x) { return V{} + x; }
    static simd::VI broadcast(int32_t x) { return simd::VI{} + x; }
    static int count(Mask stops) { return simd::count(stops); }
    static float sum(V v) { return simd::sum(v); }
    static V abs(V v) { return simd::abs(v); }
};

// Vectors for float rows of whole vectors, single pixels otherwise.
template <typename T, typename F> void with_lanes(int tile_size, F&& f) {
    if constexpr (std::is_same_v<T, float>) {
        if (tile_size % VectorLanes::kWidth == 0) return f(VectorLanes());
    }
    f(ScalarLanes<T>());
}

// One tile row (TS pixels) against one splat; returns the number of pixels that became opaque and
// stopped. acc holds channel d of the row's pixels at d * acc_stride.
template <typename L, typename T, int DC>
int composite_row(int TS, int D, int acc_stride, const T* __restrict px, const T* __restrict py, T* __restrict trans,
                  T* __restrict live, int32_t* __restrict last, T* __restrict acc, T mx, T my, T ca, T cb, T cc, T opac,
                  const T* __restrict col, int32_t k) {
    using V = typename L::V;
    const int nd = DC ? DC : D;
    const V a = L::broadcast(ca), b = L::broadcast(cb), c2 = L::broadcast(cc), o = L::broadcast(opac);
    typename L::Mask stops{};
    for (int c = 0; c < TS; c += L::kWidth) {
        const V alpha = splat_alpha(o, gauss_sigma(a, b, c2, mx - L::load(px + c), my - L::load(py + c))).alpha;
        const V tr = L::load(trans + c), lv = L::load(live + c);
        const typename L::Mask ok = (lv != T(0)) & (alpha != T(0));
        const V next_T = tr * (T(1) - alpha);
        const typename L::Mask stop = ok & (next_T < T(kTransmittanceMin));  // would make the pixel opaque: stop before it
        const typename L::Mask blend = ok & ~stop;
        const V w = blend ? alpha * tr : V{};
        for (int d = 0; d < nd; ++d) L::store(acc + d * acc_stride + c, L::load(acc + d * acc_stride + c) + w * col[d]);
        L::store(trans + c, blend ? next_T : tr);
        L::store(last + c, blend ? L::broadcast(k) : L::load(last + c));
        L::store(live + c, stop ? V{} : lv);
        stops += stop;
    }
    return L::count(stops);
}

// DC: compile-time channel count (1..4) so the channel loops unroll; 0 = runtime D. TSC: the tile size
// when known at compile time (16), else 0.
template <typename L, typename T, int DC, int TSC>
void rasterize_fwd_tiles(const TileGrid& g, int D_, const T* means2d, const T* conics, const T* colors, const T* opacities,
                         const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                         T* render_colors, T* render_alphas, int32_t* last_ids) {
    const int D = DC ? DC : D_;
    const int TS = TSC ? TSC : g.tile_size, TP = TS * TS;
    const int64_t n_tiles = int64_t(g.C) * g.tiles_w * g.tiles_h;
#pragma omp parallel
    {
        std::vector<T> px_(TP), py_(TP), trans_(TP), acc_(size_t(D) * TP), live_(TP);
        std::vector<int32_t> last_(TP), row_live(TS);  // row_live: pixels of the row still compositing
        T* __restrict px = px_.data();
        T* __restrict py = py_.data();
        T* __restrict trans = trans_.data();
        T* __restrict acc = acc_.data();
        T* __restrict live = live_.data();
        int32_t* __restrict last = last_.data();
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tiles; ++t) {
            const TileView tv = tile_view(g, t, isect_offsets, n_isects);
            for (int p = 0; p < TP; ++p) {
                const int r = p / TS, c = p % TS;
                px[p] = T(tv.x0 + c) + T(0.5);
                py[p] = T(tv.y0 + r) + T(0.5);
                trans[p] = T(1);
                live[p] = (r < tv.h && c < tv.w) ? T(1) : T(0);  // 0 once the pixel is done (or outside)
                last[p] = -1;
            }
            std::fill(acc_.begin(), acc_.end(), T(0));
            for (int r = 0; r < TS; ++r) row_live[r] = r < tv.h ? tv.w : 0;
            int active = tv.w * tv.h;
            for (int64_t k = tv.start; k < tv.end && active > 0; ++k) {
                if (k + kPrefetch < tv.end) prefetch_splat(flatten_ids[k + kPrefetch], D, means2d, conics, colors, opacities);
                const int64_t gid = flatten_ids[k];
                const T mx = means2d[gid * 2], my = means2d[gid * 2 + 1];
                const T conic[3] = {conics[gid * 3], conics[gid * 3 + 1], conics[gid * 3 + 2]};
                const T opac = opacities[gid];
                T col[DC ? DC : 1];
                const T* colp = colors + gid * D;
                if constexpr (DC > 0) {
                    for (int d = 0; d < DC; ++d) col[d] = colp[d];
                }
                int r0, r1;
                reachable_rows(conic, opac, my, tv, r0, r1);
                for (int r = r0; r <= r1; ++r) {
                    if (row_live[r] == 0) continue;
                    const int base = r * TS;
                    const int stops = composite_row<L, T, DC>(TS, D, TP, px + base, py + base, trans + base, live + base,
                                                              last + base, acc + base, mx, my, conic[0], conic[1], conic[2],
                                                              opac, DC ? col : colp, int32_t(k));
                    row_live[r] -= stops;
                    active -= stops;
                }
            }
            for (int r = 0; r < tv.h; ++r)
                for (int c = 0; c < tv.w; ++c) {
                    const int p = r * TS + c;
                    const int64_t pix = (tv.cam * g.height + tv.y0 + r) * int64_t(g.width) + tv.x0 + c;
                    for (int d = 0; d < D; ++d)
                        render_colors[pix * D + d] = acc[size_t(d) * TP + p] + (backgrounds ? trans[p] * backgrounds[tv.cam * D + d] : T(0));
                    render_alphas[pix] = T(1) - trans[p];
                    last_ids[pix] = last[p];
                }
        }
    }
}

// Per-intersection gradient record: each intersection belongs to exactly one tile, so tiles never
// write the same memory; they are summed per Gaussian afterwards, in order (deterministic).
constexpr int kRecordFixed = 8;  // mean2d (2), |mean2d| (2), conic (3), opacity (1); then D colour values

// One row of the backward: undoes this splat's blend for the row's pixels and adds its gradient terms,
// per lane, to sums (laid out like a record: kRecordFixed + D lanes), which the caller reduces once per
// splat (horizontal sums per row cost more than the math). Arrays are offset to the row; channel d of
// behind / v_out lies d * TP further.
template <typename L, typename T, int DC>
void backward_row(int TS, int D, int TP, const T* px, const T* py, T* trans, const T* t_final, const T* v_a,
                  const T* bg_dot, const T* lastf, T* behind, const T* v_out, T mx, T my, const typename L::V conic[3],
                  typename L::V opac, const T* col, T kf, typename L::V* sums) {
    using V = typename L::V;
    const int nd = DC ? DC : D;
    for (int c = 0; c < TS; c += L::kWidth) {
        const V dx = mx - L::load(px + c), dy = my - L::load(py + c);
        const SplatAlpha<V> sa = splat_alpha(opac, gauss_sigma(conic[0], conic[1], conic[2], dx, dy));
        const V alpha = kf <= L::load(lastf + c) ? sa.alpha : V{};  // only splats the pixel blended
        const V ra = T(1) / (T(1) - alpha);
        const V tr = L::load(trans + c) * ra;  // transmittance in front of this splat
        L::store(trans + c, tr);
        const V fac = alpha * tr;
        V v_alpha{};
        for (int d = 0; d < nd; ++d) {
            T* bh = behind + d * TP + c;
            const V vo = L::load(v_out + d * TP + c), bd = L::load(bh);
            sums[kRecordFixed + d] += fac * vo;
            v_alpha += (col[d] * tr - bd * ra) * vo;
            L::store(bh, bd + col[d] * fac);
        }
        v_alpha += L::load(t_final + c) * ra * (L::load(v_a + c) - L::load(bg_dot + c));
        v_alpha = alpha != T(0) ? v_alpha : V{};
        const SplatGrad<V> gr = splat_alpha_vjp(opac, sa.vis, conic, dx, dy, v_alpha);
        sums[0] += gr.mean[0];
        sums[1] += gr.mean[1];
        sums[2] += L::abs(gr.mean[0]);
        sums[3] += L::abs(gr.mean[1]);
        sums[4] += gr.conic[0];
        sums[5] += gr.conic[1];
        sums[6] += gr.conic[2];
        sums[7] += gr.opacity;
    }
}

template <typename L, typename T, int DC>
void rasterize_bwd_tiles(const TileGrid& g, int D_, const T* means2d, const T* conics, const T* colors, const T* opacities,
                         const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                         const T* render_alphas, const int32_t* last_ids, const T* v_render_colors, const T* v_render_alphas,
                         T* records) {
    using V = typename L::V;
    const int D = DC ? DC : D_;
    const int stride = kRecordFixed + D;
    const int TS = g.tile_size, TP = TS * TS;
    const int64_t n_tiles = int64_t(g.C) * g.tiles_w * g.tiles_h;
#pragma omp parallel
    {
        std::vector<T> buf(size_t(TP) * (7 + 2 * D));
        std::vector<T> row_last(TS);  // last splat any pixel of the row blended
        std::vector<V> sums(stride);  // per-lane gradient sums of the current splat
        T* __restrict px = buf.data();
        T* __restrict py = px + TP;
        T* __restrict trans = py + TP;
        T* __restrict t_final = trans + TP;
        T* __restrict v_a = t_final + TP;
        T* __restrict bg_dot = v_a + TP;
        T* __restrict lastf = bg_dot + TP;
        T* __restrict behind = lastf + TP;              // [D][TP]
        T* __restrict v_out = behind + size_t(D) * TP;  // [D][TP]
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tiles; ++t) {
            const TileView tv = tile_view(g, t, isect_offsets, n_isects);
            int64_t k_max = -1;
            std::fill(row_last.begin(), row_last.end(), T(-1));
            for (int p = 0; p < TP; ++p) {
                const int r = p / TS, c = p % TS;
                px[p] = T(tv.x0 + c) + T(0.5);
                py[p] = T(tv.y0 + r) + T(0.5);
                const bool inside = r < tv.h && c < tv.w;
                const int64_t pix = (tv.cam * g.height + tv.y0 + (inside ? r : 0)) * int64_t(g.width) + tv.x0 + (inside ? c : 0);
                t_final[p] = trans[p] = inside ? T(1) - render_alphas[pix] : T(1);
                v_a[p] = inside ? v_render_alphas[pix] : T(0);
                const int32_t l = inside ? last_ids[pix] : -1;
                lastf[p] = T(l);  // as T so that the comparison vectorises with the rest
                k_max = std::max<int64_t>(k_max, l);
                row_last[r] = std::max(row_last[r], T(l));
                T dot = 0;
                for (int d = 0; d < D; ++d) {
                    const T vo = inside ? v_render_colors[pix * D + d] : T(0);
                    v_out[size_t(d) * TP + p] = vo;
                    behind[size_t(d) * TP + p] = 0;
                    if (backgrounds) dot += backgrounds[tv.cam * D + d] * vo;
                }
                bg_dot[p] = dot;
            }
            // Back to front from the last splat any pixel blended, undoing the transmittance as we go.
            for (int64_t k = k_max; k >= tv.start; --k) {
                if (k - kPrefetch >= tv.start) prefetch_splat(flatten_ids[k - kPrefetch], D, means2d, conics, colors, opacities);
                const int64_t gid = flatten_ids[k];
                const T mx = means2d[gid * 2], my = means2d[gid * 2 + 1];
                const T conic[3] = {conics[gid * 3], conics[gid * 3 + 1], conics[gid * 3 + 2]};
                const T opac = opacities[gid];
                const T* colp = colors + gid * D;
                T col[DC ? DC : 1];
                if constexpr (DC > 0) {
                    for (int d = 0; d < DC; ++d) col[d] = colp[d];
                }
                const T kf = T(k);
                int r0, r1;
                reachable_rows(conic, opac, my, tv, r0, r1);
                const V conic_v[3] = {L::broadcast(conic[0]), L::broadcast(conic[1]), L::broadcast(conic[2])};
                std::fill(sums.begin(), sums.end(), V{});
                for (int r = r0; r <= r1; ++r) {
                    if (kf > row_last[r]) continue;
                    const int base = r * TS;
                    backward_row<L, T, DC>(TS, D, TP, px + base, py + base, trans + base, t_final + base, v_a + base,
                                           bg_dot + base, lastf + base, behind + base, v_out + base, mx, my, conic_v,
                                           L::broadcast(opac), DC ? col : colp, kf, sums.data());
                }
                T* rec = records + size_t(k) * stride;
                for (int i = 0; i < stride; ++i) rec[i] = L::sum(sums[i]);
            }
        }
    }
}

template <typename F> void with_channels(int D, F&& f) {
    switch (D) {
        case 1: f(std::integral_constant<int, 1>()); break;
        case 2: f(std::integral_constant<int, 2>()); break;
        case 3: f(std::integral_constant<int, 3>()); break;
        case 4: f(std::integral_constant<int, 4>()); break;
        default: f(std::integral_constant<int, 0>());
    }
}

}  // namespace

template <typename T> void Kernels::rasterize_fwd(const TileGrid& g, const Splats2D<T>& s, const RasterizeFwdOut<T>& o) {
    with_channels(s.D, [&](auto dc) {
        with_lanes<T>(g.tile_size, [&](auto lanes) {
            using L = decltype(lanes);
            constexpr int DCv = decltype(dc)::value;
            if (g.tile_size == 16) {
                rasterize_fwd_tiles<L, T, DCv, 16>(g, s.D, s.means2d, s.conics, s.colors, s.opacities, s.backgrounds,
                                                   s.isect_offsets, s.flatten_ids, s.n_isects, o.render_colors,
                                                   o.render_alphas, o.last_ids);
            } else {
                rasterize_fwd_tiles<L, T, DCv, 0>(g, s.D, s.means2d, s.conics, s.colors, s.opacities, s.backgrounds,
                                                  s.isect_offsets, s.flatten_ids, s.n_isects, o.render_colors,
                                                  o.render_alphas, o.last_ids);
            }
        });
    });
}

template <typename T> void Kernels::rasterize_bwd(const TileGrid& g, const Splats2D<T>& s, const RasterizeBwd<T>& b) {
    const int D = s.D, stride = kRecordFixed + D;
    std::vector<T> records(size_t(s.n_isects) * stride, T(0));
    with_channels(D, [&](auto dc) {
        with_lanes<T>(g.tile_size, [&](auto lanes) {
            rasterize_bwd_tiles<decltype(lanes), T, decltype(dc)::value>(
                g, D, s.means2d, s.conics, s.colors, s.opacities, s.backgrounds, s.isect_offsets, s.flatten_ids,
                s.n_isects, b.render_alphas, b.last_ids, b.v_render_colors, b.v_render_alphas, records.data());
        });
    });
    for (int64_t k = 0; k < s.n_isects; ++k) {
        const int64_t gid = s.flatten_ids[k];
        const T* r = records.data() + size_t(k) * stride;
        b.v_means2d[gid * 2] += r[0];
        b.v_means2d[gid * 2 + 1] += r[1];
        if (b.v_means2d_abs) {
            b.v_means2d_abs[gid * 2] += r[2];
            b.v_means2d_abs[gid * 2 + 1] += r[3];
        }
        b.v_conics[gid * 3] += r[4];
        b.v_conics[gid * 3 + 1] += r[5];
        b.v_conics[gid * 3 + 2] += r[6];
        b.v_opacities[gid] += r[7];
        for (int d = 0; d < D; ++d) b.v_colors[gid * D + d] += r[kRecordFixed + d];
    }
}

template void Kernels::rasterize_fwd<float>(const TileGrid&, const Splats2D<float>&, const RasterizeFwdOut<float>&);
template void Kernels::rasterize_fwd<double>(const TileGrid&, const Splats2D<double>&, const RasterizeFwdOut<double>&);
template void Kernels::rasterize_bwd<float>(const TileGrid&, const Splats2D<float>&, const RasterizeBwd<float>&);
template void Kernels::rasterize_bwd<double>(const TileGrid&, const Splats2D<double>&, const RasterizeBwd<double>&);

}  // namespace gk::GK_CPU_ISA_NS
