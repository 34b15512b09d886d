// Rasterisation on the CPU: OpenMP over tiles; inside a tile, the tile's Gaussians in depth order and
// the tile's pixels in the inner loop, one tile row (tile_size pixels) at a time, structure-of-arrays.
// The per-pixel math is csrc/include/gk_blend.h, shared with rasterize.cu.
//
// Row culling: a splat can only reach alpha >= 1/255 where sigma <= ln(255 o), an ellipse whose
// vertical extent is sqrt(2 ln(255 o) cov_yy). Rows beyond it (plus a pixel of margin) are skipped:
// they would evaluate to alpha = 0 anyway, so the result is the same, only faster. Rows whose pixels
// have all stopped are skipped too.
#include <algorithm>
#include <cmath>
#include <type_traits>
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

// One tile row (TS pixels) against one splat; returns the number of pixels that became opaque and
// stopped. Branch-free over restrict arrays so that a compiler can vectorise it across the row (GCC 12
// still emits scalar code here; see the note in BENCHMARKS.md). TSC: the tile size when known at
// compile time (16), else 0.
template <typename T, int DC, int TSC>
int composite_row(int TS_, int D, const T* __restrict px, const T* __restrict py, T* __restrict trans,
                  T* __restrict live, int32_t* __restrict last, T* __restrict acc, T mx, T my, T ca,
                  T cb, T cc, T opac, const T* __restrict col, int32_t k) {
    const int TS = TSC ? TSC : TS_;
    const int acc_stride = TS * TS;
    const int nd = DC ? DC : D;
    T stops = 0;  // a float count: an int reduction beside float lanes blocks vectorisation
#pragma omp simd reduction(+ : stops)
    for (int c = 0; c < TS; ++c) {
        const T alpha = splat_alpha(opac, gauss_sigma(ca, cb, cc, mx - px[c], my - py[c])).alpha;
        const bool ok = (live[c] != T(0)) & (alpha != T(0));
        const T next_T = trans[c] * (T(1) - alpha);
        const bool stop = ok & (next_T < T(kTransmittanceMin));  // would make the pixel opaque: stop before it
        const bool blend = ok & !stop;
        const T w = blend ? alpha * trans[c] : T(0);
        for (int d = 0; d < nd; ++d) acc[size_t(d) * acc_stride + c] += w * col[d];
        trans[c] = blend ? next_T : trans[c];
        last[c] = blend ? k : last[c];
        live[c] = stop ? T(0) : live[c];
        stops += stop ? T(1) : T(0);
    }
    return int(stops);
}

// composite_row for float and 16-pixel rows, written with explicit vectors (GCC leaves the loop above
// scalar): the same math through the same gk_blend.h functions, kLanes pixels at a time.
template <int DC>
int composite_row_vec(int D, const float* px, const float* py, float* trans, float* live, int32_t* last, float* acc,
                      float mx, float my, float ca, float cb, float cc, float opac, const float* col, int32_t k) {
    using namespace simd;
    constexpr int TS = 16;
    static_assert(TS % kLanes == 0, "a row is whole vectors");
    const int nd = DC ? DC : D;
    const VF a = VF{} + ca, b = VF{} + cb, c2 = VF{} + cc, o = VF{} + opac;
    VI stops{};
    for (int c = 0; c < TS; c += kLanes) {
        const VF alpha = splat_alpha(o, gauss_sigma(a, b, c2, mx - load(px + c), my - load(py + c))).alpha;
        const VF tr = load(trans + c), lv = load(live + c);
        const VI ok = (lv != 0.f) & (alpha != 0.f);
        const VF next_T = tr * (1.f - alpha);
        const VI stop = ok & (next_T < kTransmittanceMin);  // would make the pixel opaque: stop before it
        const VI blend = ok & ~stop;
        const VF w = blend ? alpha * tr : VF{};
        for (int d = 0; d < nd; ++d) store(acc + d * TS * TS + c, load(acc + d * TS * TS + c) + w * col[d]);
        store(trans + c, blend ? next_T : tr);
        store(last + c, blend ? VI{} + k : load(last + c));
        store(live + c, stop ? VF{} : lv);
        stops += stop;
    }
    return count(stops);
}

// DC: compile-time channel count (1..4) so the channel loops unroll; 0 = runtime D.
template <typename T, int DC, int TSC>
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
                const T ca = conic[0], cb = conic[1], cc = conic[2];
                for (int r = r0; r <= r1; ++r) {
                    if (row_live[r] == 0) continue;
                    const int base = r * TS;
                    int stops;
                    if constexpr (std::is_same_v<T, float> && TSC == 16)
                        stops = composite_row_vec<DC>(D, px + base, py + base, trans + base, live + base, last + base,
                                                      acc + base, mx, my, ca, cb, cc, opac, DC ? col : colp, int32_t(k));
                    else
                        stops = composite_row<T, DC, TSC>(TS, D, px + base, py + base, trans + base, live + base,
                                                          last + base, acc + base, mx, my, ca, cb, cc, opac,
                                                          DC ? col : colp, int32_t(k));
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

// One row of the backward for float and 16-pixel rows (the scalar loop in rasterize_bwd_tiles, with
// explicit vectors): undoes this splat's blend for the row's pixels and adds its gradient terms, per
// lane, to sums (laid out like a record: kRecordFixed + D vectors), which the caller reduces once per
// splat. Arrays are offset to the row; channel d of behind / v_out lies d * TP further.
template <int DC>
void backward_row_vec(int D, int TP, const float* px, const float* py, float* trans, const float* t_final,
                      const float* v_a, const float* bg_dot, const float* lastf, float* behind, const float* v_out,
                      float mx, float my, const simd::VF conic[3], simd::VF opac, const float* col, float kf,
                      simd::VF* sums) {
    using namespace simd;
    constexpr int TS = 16;
    const int nd = DC ? DC : D;
    for (int c = 0; c < TS; c += kLanes) {
        const VF dx = mx - load(px + c), dy = my - load(py + c);
        const SplatAlpha<VF> sa = splat_alpha(opac, gauss_sigma(conic[0], conic[1], conic[2], dx, dy));
        const VF alpha = kf <= load(lastf + c) ? sa.alpha : VF{};  // only splats the pixel blended
        const VF ra = 1.f / (1.f - alpha);
        const VF tr = load(trans + c) * ra;  // transmittance in front of this splat
        store(trans + c, tr);
        const VF fac = alpha * tr;
        VF v_alpha{};
        for (int d = 0; d < nd; ++d) {
            float* bh = behind + d * TP + c;
            const VF vo = load(v_out + d * TP + c), bd = load(bh);
            sums[kRecordFixed + d] += fac * vo;
            v_alpha += (col[d] * tr - bd * ra) * vo;
            store(bh, bd + col[d] * fac);
        }
        v_alpha += load(t_final + c) * ra * (load(v_a + c) - load(bg_dot + c));
        v_alpha = alpha != 0.f ? v_alpha : VF{};
        const SplatGrad<VF> gr = splat_alpha_vjp(opac, sa.vis, conic, dx, dy, v_alpha);
        sums[0] += gr.mean[0];
        sums[1] += gr.mean[1];
        sums[2] += abs(gr.mean[0]);
        sums[3] += abs(gr.mean[1]);
        sums[4] += gr.conic[0];
        sums[5] += gr.conic[1];
        sums[6] += gr.conic[2];
        sums[7] += gr.opacity;
    }
}

template <typename T, int DC>
void rasterize_bwd_tiles(const TileGrid& g, int D_, const T* means2d, const T* conics, const T* colors, const T* opacities,
                         const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                         const T* render_alphas, const int32_t* last_ids, const T* v_render_colors, const T* v_render_alphas,
                         T* records) {
    const int D = DC ? DC : D_;
    const int stride = kRecordFixed + D;
    const int TS = g.tile_size, TP = TS * TS;
    const int64_t n_tiles = int64_t(g.C) * g.tiles_w * g.tiles_h;
#pragma omp parallel
    {
        std::vector<T> buf(size_t(TP) * (8 + 2 * D) + size_t(TS) * (6 + D));
        std::vector<T> row_last(TS);  // last splat any pixel of the row blended
        T* __restrict px = buf.data();
        T* __restrict py = px + TP;
        T* __restrict trans = py + TP;
        T* __restrict t_final = trans + TP;
        T* __restrict v_a = t_final + TP;
        T* __restrict bg_dot = v_a + TP;
        T* __restrict lastf = bg_dot + TP;
        T* __restrict behind = lastf + TP;          // [D][TP]
        T* __restrict v_out = behind + size_t(D) * TP;  // [D][TP]
        // per-pixel gradient terms of the current splat, for one row, reduced after the row
        T* __restrict s_m0 = v_out + size_t(D) * TP;
        T* __restrict s_m1 = s_m0 + TS;
        T* __restrict s_c0 = s_m1 + TS;
        T* __restrict s_c1 = s_c0 + TS;
        T* __restrict s_c2 = s_c1 + TS;
        T* __restrict s_op = s_c2 + TS;
        T* __restrict s_col = s_op + TS;            // [D][TS]
        // float, 16-pixel rows: explicit vectors (backward_row_vec), their per-lane sums reduced per splat
        const bool vec_rows = std::is_same_v<T, float> && TS == 16;
        std::vector<simd::VF> sums_(vec_rows ? stride : 0);
        simd::VF* sums = sums_.data();
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
                const T ca = conic[0], cb = conic[1], cc = conic[2];
                const T opac = opacities[gid];
                const T* colp = colors + gid * D;
                T col[DC ? DC : 1];
                if constexpr (DC > 0) {
                    for (int d = 0; d < DC; ++d) col[d] = colp[d];
                }
                const T kf = T(k);
                T* rec = records + size_t(k) * stride;
                for (int i = 0; i < stride; ++i) rec[i] = 0;
                int r0, r1;
                reachable_rows(conic, opac, my, tv, r0, r1);
                const simd::VF conic_v[3] = {simd::VF{} + float(ca), simd::VF{} + float(cb), simd::VF{} + float(cc)};
                const simd::VF opac_v = simd::VF{} + float(opac);
                if (vec_rows)
                    for (int i = 0; i < stride; ++i) sums[i] = simd::VF{};
                for (int r = r0; r <= r1; ++r) {
                    if (kf > row_last[r]) continue;
                    const int base = r * TS;
                    if constexpr (std::is_same_v<T, float>) {
                        if (vec_rows) {
                            backward_row_vec<DC>(D, TP, px + base, py + base, trans + base, t_final + base, v_a + base,
                                                 bg_dot + base, lastf + base, behind + base, v_out + base, mx, my, conic_v,
                                                 opac_v, DC ? col : colp, kf, sums);
                            continue;
                        }
                    }
#pragma omp simd
                    for (int c = 0; c < TS; ++c) {
                        const int p = base + c;
                        const T dx = mx - px[p], dy = my - py[p];
                        const SplatAlpha<T> sa = splat_alpha(opac, gauss_sigma(ca, cb, cc, dx, dy));
                        const T alpha = kf <= lastf[p] ? sa.alpha : T(0);  // only splats the pixel blended
                        const bool on = alpha != T(0);
                        const T ra = T(1) / (T(1) - alpha);
                        const T tr = trans[p] * ra;  // transmittance in front of this splat
                        trans[p] = tr;
                        const T fac = alpha * tr;
                        T v_alpha = 0;
                        for (int d = 0; d < D; ++d) {
                            const T vo = v_out[size_t(d) * TP + p];
                            const T cd = DC ? col[DC ? d : 0] : colp[d];
                            s_col[size_t(d) * TS + c] = fac * vo;
                            v_alpha += (cd * tr - behind[size_t(d) * TP + p] * ra) * vo;
                            behind[size_t(d) * TP + p] += cd * fac;
                        }
                        v_alpha += t_final[p] * ra * (v_a[p] - bg_dot[p]);
                        v_alpha = on ? v_alpha : T(0);
                        const SplatGrad<T> gr = splat_alpha_vjp(opac, sa.vis, conic, dx, dy, v_alpha);
                        s_m0[c] = gr.mean[0];
                        s_m1[c] = gr.mean[1];
                        s_c0[c] = gr.conic[0];
                        s_c1[c] = gr.conic[1];
                        s_c2[c] = gr.conic[2];
                        s_op[c] = gr.opacity;
                    }
                    T m0 = 0, m1 = 0, a0 = 0, a1 = 0, c0 = 0, c1 = 0, c2 = 0, op = 0;
#pragma omp simd reduction(+ : m0, m1, a0, a1, c0, c1, c2, op)
                    for (int c = 0; c < TS; ++c) {
                        m0 += s_m0[c];
                        m1 += s_m1[c];
                        a0 += std::abs(s_m0[c]);
                        a1 += std::abs(s_m1[c]);
                        c0 += s_c0[c];
                        c1 += s_c1[c];
                        c2 += s_c2[c];
                        op += s_op[c];
                    }
                    rec[0] += m0; rec[1] += m1; rec[2] += a0; rec[3] += a1;
                    rec[4] += c0; rec[5] += c1; rec[6] += c2; rec[7] += op;
                    for (int d = 0; d < D; ++d) {
                        T s = 0;
#pragma omp simd reduction(+ : s)
                        for (int c = 0; c < TS; ++c) s += s_col[size_t(d) * TS + c];
                        rec[kRecordFixed + d] += s;
                    }
                }
                if (vec_rows)
                    for (int i = 0; i < stride; ++i) rec[i] += simd::sum(sums[i]);
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

template <typename T>
void rasterize_fwd_cpu(const TileGrid& g, int D, const T* means2d, const T* conics, const T* colors, const T* opacities,
                       const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                       T* render_colors, T* render_alphas, int32_t* last_ids) {
    with_channels(D, [&](auto dc) {
        constexpr int DCv = decltype(dc)::value;
        if (g.tile_size == 16) {
            rasterize_fwd_tiles<T, DCv, 16>(g, D, means2d, conics, colors, opacities, backgrounds, isect_offsets,
                                            flatten_ids, n_isects, render_colors, render_alphas, last_ids);
        } else {
            rasterize_fwd_tiles<T, DCv, 0>(g, D, means2d, conics, colors, opacities, backgrounds, isect_offsets,
                                           flatten_ids, n_isects, render_colors, render_alphas, last_ids);
        }
    });
}

template <typename T>
void rasterize_bwd_cpu(const TileGrid& g, int D, const T* means2d, const T* conics, const T* colors, const T* opacities,
                       const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                       const T* render_alphas, const int32_t* last_ids, const T* v_render_colors, const T* v_render_alphas,
                       T* v_means2d, T* v_means2d_abs, T* v_conics, T* v_colors, T* v_opacities) {
    const int stride = kRecordFixed + D;
    std::vector<T> records(size_t(n_isects) * stride, T(0));
    with_channels(D, [&](auto dc) {
        rasterize_bwd_tiles<T, decltype(dc)::value>(g, D, means2d, conics, colors, opacities, backgrounds, isect_offsets,
                                                    flatten_ids, n_isects, render_alphas, last_ids, v_render_colors,
                                                    v_render_alphas, records.data());
    });
    for (int64_t k = 0; k < n_isects; ++k) {
        const int64_t gid = flatten_ids[k];
        const T* b = records.data() + size_t(k) * stride;
        v_means2d[gid * 2] += b[0];
        v_means2d[gid * 2 + 1] += b[1];
        if (v_means2d_abs) {
            v_means2d_abs[gid * 2] += b[2];
            v_means2d_abs[gid * 2 + 1] += b[3];
        }
        v_conics[gid * 3] += b[4];
        v_conics[gid * 3 + 1] += b[5];
        v_conics[gid * 3 + 2] += b[6];
        v_opacities[gid] += b[7];
        for (int d = 0; d < D; ++d) v_colors[gid * D + d] += b[kRecordFixed + d];
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
