// Rasterisation on CUDA: one block per tile, one thread per pixel; the tile's Gaussians are staged in
// shared memory in batches (as in graphdeco's forward.cu / backward.cu). The per-pixel math is
// gk_blend.h, shared with rasterize_cpu.cpp. Colour channels are a template bound (1..32) so the
// per-pixel accumulators live in registers.
#include "cuda_common.cuh"
#include "gk_blend.h"
#include "kernels.h"

namespace gk {

template <typename T> struct SplatShared {
    int32_t id;
    T mx, my, opacity;
    T conic[3];
};

template <typename T>
__device__ __forceinline__ SplatShared<T> load_splat(int32_t gid, const T* means2d, const T* conics, const T* opacities) {
    SplatShared<T> s;
    s.id = gid;
    s.mx = means2d[int64_t(gid) * 2];
    s.my = means2d[int64_t(gid) * 2 + 1];
    s.opacity = opacities[gid];
    s.conic[0] = conics[int64_t(gid) * 3];
    s.conic[1] = conics[int64_t(gid) * 3 + 1];
    s.conic[2] = conics[int64_t(gid) * 3 + 2];
    return s;
}

// This thread's pixel (block = tile, blockIdx.z = camera) and its tile's run of intersections.
template <typename T> struct TilePixel {
    int cam, x, y;
    bool inside;
    T px, py;
    int64_t start, end;
};

template <typename T>
__device__ __forceinline__ TilePixel<T> tile_pixel(const TileGrid& g, const int32_t* isect_offsets, int64_t n_isects) {
    TilePixel<T> p;
    p.cam = blockIdx.z;
    p.x = blockIdx.x * g.tile_size + threadIdx.x % g.tile_size;
    p.y = blockIdx.y * g.tile_size + threadIdx.x / g.tile_size;
    p.inside = p.x < g.width && p.y < g.height;
    p.px = T(p.x) + T(0.5);
    p.py = T(p.y) + T(0.5);
    const int64_t n_tiles = int64_t(g.C) * g.tiles_w * g.tiles_h;
    const int64_t t = int64_t(p.cam) * g.tiles_w * g.tiles_h + blockIdx.y * g.tiles_w + blockIdx.x;
    p.start = isect_offsets[t];
    p.end = t + 1 < n_tiles ? isect_offsets[t + 1] : n_isects;
    return p;
}

template <typename T, int CMAX>
__global__ void rasterize_fwd_kernel(TileGrid g, int D, const T* means2d, const T* conics, const T* colors,
                                     const T* opacities, const T* backgrounds, const int32_t* isect_offsets,
                                     const int32_t* flatten_ids, int64_t n_isects, T* render_colors, T* render_alphas,
                                     int32_t* last_ids) {
    extern __shared__ unsigned char smem_raw[];
    SplatShared<T>* batch = reinterpret_cast<SplatShared<T>*>(smem_raw);
    const TilePixel<T> tp = tile_pixel<T>(g, isect_offsets, n_isects);
    const int cam = tp.cam, x = tp.x, y = tp.y;
    const bool inside = tp.inside;
    const T px = tp.px, py = tp.py;
    const int64_t start = tp.start, end = tp.end;
    const int block = blockDim.x;

    T trans = T(1);
    T acc[CMAX];
    for (int d = 0; d < CMAX; ++d) acc[d] = T(0);
    int32_t last = -1;
    bool done = !inside;
    for (int64_t b0 = start; b0 < end; b0 += block) {
        if (__syncthreads_count(done) == block) break;
        const int64_t k = b0 + threadIdx.x;
        if (k < end) batch[threadIdx.x] = load_splat(flatten_ids[k], means2d, conics, opacities);
        __syncthreads();
        const int count = int(min(int64_t(block), end - b0));
        for (int j = 0; j < count && !done; ++j) {
            const SplatShared<T>& s = batch[j];
            const T alpha = splat_alpha(s.opacity, gauss_sigma(s.conic, s.mx - px, s.my - py)).alpha;
            if (alpha == T(0)) continue;
            const T next_T = trans * (T(1) - alpha);
            if (next_T < T(kTransmittanceMin)) {
                done = true;
                break;
            }
            const T w = alpha * trans;
            const T* col = colors + int64_t(s.id) * D;
            for (int d = 0; d < D; ++d) acc[d] += w * col[d];
            trans = next_T;
            last = int32_t(b0 + j);
        }
        __syncthreads();
    }
    if (!inside) return;
    const int64_t pix = (int64_t(cam) * g.height + y) * g.width + x;
    for (int d = 0; d < D; ++d)
        render_colors[pix * D + d] = acc[d] + (backgrounds ? trans * backgrounds[int64_t(cam) * D + d] : T(0));
    render_alphas[pix] = T(1) - trans;
    last_ids[pix] = last;
}

template <typename T, int CMAX>
__global__ void rasterize_bwd_kernel(TileGrid g, int D, const T* means2d, const T* conics, const T* colors,
                                     const T* opacities, const T* backgrounds, const int32_t* isect_offsets,
                                     const int32_t* flatten_ids, int64_t n_isects, const T* render_alphas,
                                     const int32_t* last_ids, const T* v_render_colors, const T* v_render_alphas,
                                     T* v_means2d, T* v_means2d_abs, T* v_conics, T* v_colors, T* v_opacities) {
    extern __shared__ unsigned char smem_raw[];
    SplatShared<T>* batch = reinterpret_cast<SplatShared<T>*>(smem_raw);
    const TilePixel<T> tp = tile_pixel<T>(g, isect_offsets, n_isects);
    const int cam = tp.cam, x = tp.x, y = tp.y;
    const bool inside = tp.inside;
    const T px = tp.px, py = tp.py;
    const int64_t start = tp.start, end = tp.end;
    const int block = blockDim.x;
    const int64_t pix = (int64_t(cam) * g.height + (inside ? y : 0)) * g.width + (inside ? x : 0);

    T t_final = inside ? T(1) - render_alphas[pix] : T(1);
    T trans = t_final;
    int32_t last = inside ? last_ids[pix] : -1;
    T v_out[CMAX], behind[CMAX];
    T bg_dot = 0;
    for (int d = 0; d < CMAX; ++d) v_out[d] = behind[d] = T(0);
    for (int d = 0; d < D; ++d) {
        v_out[d] = inside ? v_render_colors[pix * D + d] : T(0);
        if (backgrounds) bg_dot += backgrounds[int64_t(cam) * D + d] * v_out[d];
    }
    const T v_a = inside ? v_render_alphas[pix] : T(0);
    // The block only needs to walk back from the last splat any of its pixels blended.
    __shared__ int32_t block_last;
    if (threadIdx.x == 0) block_last = -1;
    __syncthreads();
    atomicMax(&block_last, last);
    __syncthreads();
    const int64_t stop = block_last + 1;  // one past the last intersection to visit
    const int lane = threadIdx.x % 32;

    for (int64_t b1 = stop; b1 > start; b1 -= block) {
        const int64_t b0 = max(start, b1 - block);
        const int count = int(b1 - b0);
        __syncthreads();
        if (threadIdx.x < count) {  // batch[j] holds intersection b1 - 1 - j (back to front)
            batch[threadIdx.x] = load_splat(flatten_ids[b1 - 1 - threadIdx.x], means2d, conics, opacities);
        }
        __syncthreads();
        for (int j = 0; j < count; ++j) {
            const SplatShared<T>& s = batch[j];
            const int64_t k = b1 - 1 - j;
            T v_mean[2] = {0, 0}, v_con[3] = {0, 0, 0}, v_op = 0;
            T v_col[CMAX];
            for (int d = 0; d < CMAX; ++d) v_col[d] = T(0);
            bool contributes = false;
            if (k <= last) {
                const T dx = s.mx - px, dy = s.my - py;
                const SplatAlpha<T> sa = splat_alpha(s.opacity, gauss_sigma(s.conic, dx, dy));
                const T alpha = sa.alpha;
                if (alpha != T(0)) {
                    contributes = true;
                    const T ra = T(1) / (T(1) - alpha);
                    trans *= ra;
                    const T fac = alpha * trans;
                    const T* col = colors + int64_t(s.id) * D;
                    T v_alpha = 0;
                    for (int d = 0; d < D; ++d) {
                        v_col[d] = fac * v_out[d];
                        v_alpha += (col[d] * trans - behind[d] * ra) * v_out[d];
                        behind[d] += col[d] * fac;
                    }
                    v_alpha += t_final * ra * (v_a - bg_dot);
                    const SplatGrad<T> gr = splat_alpha_vjp(s.opacity, sa.vis, s.conic, dx, dy, v_alpha);
                    for (int i = 0; i < 3; ++i) v_con[i] = gr.conic[i];
                    v_mean[0] = gr.mean[0];
                    v_mean[1] = gr.mean[1];
                    v_op = gr.opacity;
                }
            }
            // Sum over the warp, then one atomic per warp and value.
            if (!__any_sync(0xffffffffu, contributes)) continue;
            const T abs0 = v_mean[0] < 0 ? -v_mean[0] : v_mean[0];
            const T abs1 = v_mean[1] < 0 ? -v_mean[1] : v_mean[1];
            T r_m0 = warp_sum(v_mean[0]), r_m1 = warp_sum(v_mean[1]);
            T r_a0 = warp_sum(abs0), r_a1 = warp_sum(abs1);
            T r_c0 = warp_sum(v_con[0]), r_c1 = warp_sum(v_con[1]), r_c2 = warp_sum(v_con[2]);
            T r_op = warp_sum(v_op);
            for (int d = 0; d < D; ++d) v_col[d] = warp_sum(v_col[d]);
            if (lane == 0) {
                const int64_t gid = s.id;
                atomicAdd(v_means2d + gid * 2, r_m0);
                atomicAdd(v_means2d + gid * 2 + 1, r_m1);
                if (v_means2d_abs) {
                    atomicAdd(v_means2d_abs + gid * 2, r_a0);
                    atomicAdd(v_means2d_abs + gid * 2 + 1, r_a1);
                }
                atomicAdd(v_conics + gid * 3, r_c0);
                atomicAdd(v_conics + gid * 3 + 1, r_c1);
                atomicAdd(v_conics + gid * 3 + 2, r_c2);
                atomicAdd(v_opacities + gid, r_op);
                for (int d = 0; d < D; ++d) atomicAdd(v_colors + gid * D + d, v_col[d]);
            }
        }
    }
}

// Channel bound dispatch: the smallest compiled bound >= D.
template <typename T, typename F> void with_channel_bound(int D, F&& f) {
    if (D <= 1) f(std::integral_constant<int, 1>());
    else if (D <= 2) f(std::integral_constant<int, 2>());
    else if (D <= 3) f(std::integral_constant<int, 3>());
    else if (D <= 4) f(std::integral_constant<int, 4>());
    else if (D <= 8) f(std::integral_constant<int, 8>());
    else if (D <= 16) f(std::integral_constant<int, 16>());
    else f(std::integral_constant<int, 32>());
}

template <typename T>
void rasterize_fwd_cuda(const TileGrid& g, int D, const T* means2d, const T* conics, const T* colors, const T* opacities,
                        const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                        T* render_colors, T* render_alphas, int32_t* last_ids, void* stream) {
    dim3 grid(g.tiles_w, g.tiles_h, g.C);
    const int threads = g.tile_size * g.tile_size;
    const size_t smem = sizeof(SplatShared<T>) * threads;
    with_channel_bound<T>(D, [&](auto bound) {
        rasterize_fwd_kernel<T, decltype(bound)::value><<<grid, threads, smem, as_stream(stream)>>>(
            g, D, means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, n_isects, render_colors,
            render_alphas, last_ids);
    });
}

template <typename T>
void rasterize_bwd_cuda(const TileGrid& g, int D, const T* means2d, const T* conics, const T* colors, const T* opacities,
                        const T* backgrounds, const int32_t* isect_offsets, const int32_t* flatten_ids, int64_t n_isects,
                        const T* render_alphas, const int32_t* last_ids, const T* v_render_colors,
                        const T* v_render_alphas, T* v_means2d, T* v_means2d_abs, T* v_conics, T* v_colors,
                        T* v_opacities, void* stream) {
    dim3 grid(g.tiles_w, g.tiles_h, g.C);
    const int threads = g.tile_size * g.tile_size;
    const size_t smem = sizeof(SplatShared<T>) * threads;
    with_channel_bound<T>(D, [&](auto bound) {
        rasterize_bwd_kernel<T, decltype(bound)::value><<<grid, threads, smem, as_stream(stream)>>>(
            g, D, means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, n_isects, render_alphas,
            last_ids, v_render_colors, v_render_alphas, v_means2d, v_means2d_abs, v_conics, v_colors, v_opacities);
    });
}

#define GK_INSTANTIATE(T)                                                                                           \
    template void rasterize_fwd_cuda<T>(const TileGrid&, int, const T*, const T*, const T*, const T*, const T*,     \
                                        const int32_t*, const int32_t*, int64_t, T*, T*, int32_t*, void*);          \
    template void rasterize_bwd_cuda<T>(const TileGrid&, int, const T*, const T*, const T*, const T*, const T*,     \
                                        const int32_t*, const int32_t*, int64_t, const T*, const int32_t*, const T*, \
                                        const T*, T*, T*, T*, T*, T*, void*);
GK_INSTANTIATE(float)
GK_INSTANTIATE(double)
#undef GK_INSTANTIATE

}  // namespace gk
