// Rasterisation on CUDA: one block per tile, one thread per pixel (8x8, 16x16 or 32x32 tiles: blocks
// of whole warps); the tile's Gaussians are staged in shared memory in batches of at most kBatch (as
// in graphdeco's forward.cu / backward.cu). The per-pixel math is gk_blend.h, shared with
// rasterize_cpu.cpp. Colour channels are a template bound (1..32) so the per-pixel accumulators live
// in registers.
#include <type_traits>

#include "cuda_common.cuh"
#include "gk_blend.h"
#include "kernels.h"

namespace gk {

// Splats staged per batch: 256 x 48 bytes (float64) fits the default 48 KiB of shared memory, also
// for 32x32 tiles, whose 1024 threads then load a batch with their first 256.
constexpr int kBatch = 256;

template <typename T> struct SplatShared {
    int32_t id;
    T mx, my, opacity;
    T conic[3];
};

template <typename T> __device__ __forceinline__ SplatShared<T> load_splat(int32_t gid, const Splats2D<T>& s) {
    SplatShared<T> r;
    r.id = gid;
    r.mx = s.means2d[int64_t(gid) * 2];
    r.my = s.means2d[int64_t(gid) * 2 + 1];
    r.opacity = s.opacities[gid];
    r.conic[0] = s.conics[int64_t(gid) * 3];
    r.conic[1] = s.conics[int64_t(gid) * 3 + 1];
    r.conic[2] = s.conics[int64_t(gid) * 3 + 2];
    return r;
}

// This thread's pixel (block = tile, blockIdx.z = camera) and its tile's run of intersections.
template <typename T> struct TilePixel {
    int cam, x, y;
    bool inside;
    T px, py;
    int64_t start, end;
};

template <typename T> __device__ __forceinline__ TilePixel<T> tile_pixel(const TileGrid& g, const Splats2D<T>& s) {
    TilePixel<T> p;
    p.cam = blockIdx.z;
    p.x = blockIdx.x * g.tile_size + threadIdx.x % g.tile_size;
    p.y = blockIdx.y * g.tile_size + threadIdx.x / g.tile_size;
    p.inside = p.x < g.width && p.y < g.height;
    p.px = T(p.x) + T(0.5);
    p.py = T(p.y) + T(0.5);
    const int64_t n_tiles = int64_t(g.C) * g.tiles_w * g.tiles_h;
    const int64_t t = int64_t(p.cam) * g.tiles_w * g.tiles_h + blockIdx.y * g.tiles_w + blockIdx.x;
    p.start = s.isect_offsets[t];
    p.end = t + 1 < n_tiles ? s.isect_offsets[t + 1] : s.n_isects;
    return p;
}

// MAXT: the launch's block size bound (__launch_bounds__), so 32x32 tiles compile to fit 1024 threads.
template <typename T, int CMAX, int MAXT>
__global__ void __launch_bounds__(MAXT) rasterize_fwd_kernel(TileGrid g, Splats2D<T> s, RasterizeFwdOut<T> o) {
    GK_DYNAMIC_SHARED(SplatShared<T>, batch);
    const TilePixel<T> tp = tile_pixel<T>(g, s);
    const int block = blockDim.x, batch_size = min(block, kBatch), D = s.D;

    T trans = T(1);
    T acc[CMAX];
    for (int d = 0; d < CMAX; ++d) acc[d] = T(0);
    int32_t last = -1;
    bool done = !tp.inside;
    for (int64_t b0 = tp.start; b0 < tp.end; b0 += batch_size) {
        if (__syncthreads_count(done) == block) break;
        const int64_t k = b0 + threadIdx.x;
        if (int(threadIdx.x) < batch_size && k < tp.end) batch[threadIdx.x] = load_splat(s.flatten_ids[k], s);
        __syncthreads();
        const int count = int(min(int64_t(batch_size), tp.end - b0));
        for (int j = 0; j < count && !done; ++j) {
            const SplatShared<T>& sp = batch[j];
            const T alpha = splat_alpha(sp.opacity, gauss_sigma(sp.conic, sp.mx - tp.px, sp.my - tp.py)).alpha;
            if (alpha == T(0)) continue;
            const T next_T = trans * (T(1) - alpha);
            if (next_T < T(kTransmittanceMin)) {
                done = true;
                break;
            }
            const T w = alpha * trans;
            const T* col = s.colors + int64_t(sp.id) * D;
            for (int d = 0; d < D; ++d) acc[d] += w * col[d];
            trans = next_T;
            last = int32_t(b0 + j);
        }
        __syncthreads();
    }
    if (!tp.inside) return;
    const int64_t pix = (int64_t(tp.cam) * g.height + tp.y) * g.width + tp.x;
    for (int d = 0; d < D; ++d)
        o.render_colors[pix * D + d] = acc[d] + (s.backgrounds ? trans * s.backgrounds[int64_t(tp.cam) * D + d] : T(0));
    o.render_alphas[pix] = T(1) - trans;
    o.last_ids[pix] = last;
}

template <typename T, int CMAX, int MAXT>
__global__ void __launch_bounds__(MAXT) rasterize_bwd_kernel(TileGrid g, Splats2D<T> s, RasterizeBwd<T> b) {
    GK_DYNAMIC_SHARED(SplatShared<T>, batch);
    const TilePixel<T> tp = tile_pixel<T>(g, s);
    const int cam = tp.cam, D = s.D;
    const bool inside = tp.inside;
    const int block = blockDim.x, batch_size = min(block, kBatch);
    const int64_t pix = (int64_t(cam) * g.height + (inside ? tp.y : 0)) * g.width + (inside ? tp.x : 0);

    T t_final = inside ? T(1) - b.render_alphas[pix] : T(1);
    T trans = t_final;
    int32_t last = inside ? b.last_ids[pix] : -1;
    T v_out[CMAX], behind[CMAX];
    T bg_dot = 0;
    for (int d = 0; d < CMAX; ++d) v_out[d] = behind[d] = T(0);
    for (int d = 0; d < D; ++d) {
        v_out[d] = inside ? b.v_render_colors[pix * D + d] : T(0);
        if (s.backgrounds) bg_dot += s.backgrounds[int64_t(cam) * D + d] * v_out[d];
    }
    const T v_a = inside ? b.v_render_alphas[pix] : T(0);
    // The block only needs to walk back from the last splat any of its pixels blended.
    __shared__ int32_t block_last;
    if (threadIdx.x == 0) block_last = -1;
    __syncthreads();
    atomicMax(&block_last, last);
    __syncthreads();
    const int64_t stop = block_last + 1;  // one past the last intersection to visit
    const int lane = threadIdx.x % 32;

    for (int64_t b1 = stop; b1 > tp.start; b1 -= batch_size) {
        const int64_t b0 = max(tp.start, b1 - batch_size);
        const int count = int(b1 - b0);
        __syncthreads();
        if (int(threadIdx.x) < count) {  // batch[j] holds intersection b1 - 1 - j (back to front)
            batch[threadIdx.x] = load_splat(s.flatten_ids[b1 - 1 - threadIdx.x], s);
        }
        __syncthreads();
        for (int j = 0; j < count; ++j) {
            const SplatShared<T>& sp = batch[j];
            const int64_t k = b1 - 1 - j;
            T v_mean[2] = {0, 0}, v_con[3] = {0, 0, 0}, v_op = 0;
            T v_col[CMAX];
            for (int d = 0; d < CMAX; ++d) v_col[d] = T(0);
            bool contributes = false;
            if (k <= last) {
                const T dx = sp.mx - tp.px, dy = sp.my - tp.py;
                const SplatAlpha<T> sa = splat_alpha(sp.opacity, gauss_sigma(sp.conic, dx, dy));
                const T alpha = sa.alpha;
                if (alpha != T(0)) {
                    contributes = true;
                    const T ra = T(1) / (T(1) - alpha);
                    trans *= ra;
                    const T fac = alpha * trans;
                    const T* col = s.colors + int64_t(sp.id) * D;
                    T v_alpha = 0;
                    for (int d = 0; d < D; ++d) {
                        v_col[d] = fac * v_out[d];
                        v_alpha += (col[d] * trans - behind[d] * ra) * v_out[d];
                        behind[d] += col[d] * fac;
                    }
                    v_alpha += t_final * ra * (v_a - bg_dot);
                    const SplatGrad<T> gr = splat_alpha_vjp(sp.opacity, sa.vis, sp.conic, dx, dy, v_alpha);
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
                const int64_t gid = sp.id;
                atomicAdd(b.v_means2d + gid * 2, r_m0);
                atomicAdd(b.v_means2d + gid * 2 + 1, r_m1);
                if (b.v_means2d_abs) {
                    atomicAdd(b.v_means2d_abs + gid * 2, r_a0);
                    atomicAdd(b.v_means2d_abs + gid * 2 + 1, r_a1);
                }
                atomicAdd(b.v_conics + gid * 3, r_c0);
                atomicAdd(b.v_conics + gid * 3 + 1, r_c1);
                atomicAdd(b.v_conics + gid * 3 + 2, r_c2);
                atomicAdd(b.v_opacities + gid, r_op);
                for (int d = 0; d < D; ++d) atomicAdd(b.v_colors + gid * D + d, v_col[d]);
            }
        }
    }
}

// The launch of one rasterise kernel: block = tile, channel bound = the smallest compiled bound >= D
// (the op checks D <= kCudaMaxChannels and the tile size), block size bound by the tile size.
template <typename F> void with_launch_bounds(const TileGrid& g, int D, F&& f) {
    auto by_tile = [&](auto cmax) {
        if (g.tile_size == 32) f(cmax, std::integral_constant<int, 1024>());
        else f(cmax, std::integral_constant<int, 256>());
    };
    if (D <= 1) by_tile(std::integral_constant<int, 1>());
    else if (D <= 2) by_tile(std::integral_constant<int, 2>());
    else if (D <= 3) by_tile(std::integral_constant<int, 3>());
    else if (D <= 4) by_tile(std::integral_constant<int, 4>());
    else if (D <= 8) by_tile(std::integral_constant<int, 8>());
    else if (D <= 16) by_tile(std::integral_constant<int, 16>());
    else by_tile(std::integral_constant<int, kCudaMaxChannels>());
}

template <typename T> size_t batch_bytes(const TileGrid& g) {
    const int threads = g.tile_size * g.tile_size;
    return sizeof(SplatShared<T>) * size_t(threads < kBatch ? threads : kBatch);
}

template <typename T>
void rasterize_fwd_cuda(const TileGrid& g, const Splats2D<T>& s, const RasterizeFwdOut<T>& o, void* stream) {
    const dim3 grid(g.tiles_w, g.tiles_h, g.C);
    with_launch_bounds(g, s.D, [&](auto cmax, auto maxt) {
        launch(rasterize_fwd_kernel<T, decltype(cmax)::value, decltype(maxt)::value>, grid, g.tile_size * g.tile_size,
               batch_bytes<T>(g), stream, g, s, o);
    });
}

template <typename T>
void rasterize_bwd_cuda(const TileGrid& g, const Splats2D<T>& s, const RasterizeBwd<T>& b, void* stream) {
    const dim3 grid(g.tiles_w, g.tiles_h, g.C);
    with_launch_bounds(g, s.D, [&](auto cmax, auto maxt) {
        launch(rasterize_bwd_kernel<T, decltype(cmax)::value, decltype(maxt)::value>, grid, g.tile_size * g.tile_size,
               batch_bytes<T>(g), stream, g, s, b);
    });
}

template void rasterize_fwd_cuda<float>(const TileGrid&, const Splats2D<float>&, const RasterizeFwdOut<float>&, void*);
template void rasterize_fwd_cuda<double>(const TileGrid&, const Splats2D<double>&, const RasterizeFwdOut<double>&, void*);
template void rasterize_bwd_cuda<float>(const TileGrid&, const Splats2D<float>&, const RasterizeBwd<float>&, void*);
template void rasterize_bwd_cuda<double>(const TileGrid&, const Splats2D<double>&, const RasterizeBwd<double>&, void*);

}  // namespace gk
