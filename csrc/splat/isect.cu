// Tile binning on CUDA, the pipeline of graphdeco's rasterizer_impl.cu: count tiles per Gaussian ->
// prefix sum (by the caller) -> duplicate with (camera | tile | depth) keys -> CUB radix sort ->
// identify tile ranges.
#include <cub/cub.cuh>

#include "cuda_common.cuh"
#include "gk_blend.h"
#include "kernels.h"

namespace gk {

template <typename T>
__global__ void isect_count_kernel(TileGrid g, int N, const T* means2d, const int32_t* radii, int32_t* tiles_per_gauss) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= int64_t(g.C) * N) return;
    int32_t n_tiles = 0;
    if (radii[i * 2] > 0 || radii[i * 2 + 1] > 0) {
        int x0, x1, y0, y1;
        tile_range(means2d[i * 2], means2d[i * 2 + 1], radii[i * 2], radii[i * 2 + 1], g.tile_size, g.tiles_w, g.tiles_h,
                   x0, x1, y0, y1);
        n_tiles = (x1 - x0) * (y1 - y0);
    }
    tiles_per_gauss[i] = n_tiles;
}

template <typename T>
__global__ void isect_emit_kernel(TileGrid g, int N, const T* means2d, const int32_t* radii, const T* depths,
                                  const int64_t* cum_tiles, int tile_bits, int64_t* keys, int32_t* ids) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= int64_t(g.C) * N) return;
    if (radii[i * 2] <= 0 && radii[i * 2 + 1] <= 0) return;
    int x0, x1, y0, y1;
    tile_range(means2d[i * 2], means2d[i * 2 + 1], radii[i * 2], radii[i * 2 + 1], g.tile_size, g.tiles_w, g.tiles_h, x0,
               x1, y0, y1);
    int64_t k = i == 0 ? 0 : cum_tiles[i - 1];
    const int64_t cam = i / N;
    for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x, ++k) {
            keys[k] = int64_t(isect_key(cam, int64_t(y) * g.tiles_w + x, float(depths[i]), tile_bits));
            ids[k] = int32_t(i);
        }
}

// offsets[t] = first intersection of global tile t (camera-major); empty tiles get the next start.
__global__ void tile_offsets_kernel(int64_t n, const int64_t* keys, int64_t n_tiles_total, int tile_bits, int64_t per_cam,
                                    int32_t* offsets) {
    const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (k >= n) return;
    auto tile_of = [&](int64_t key) {
        const uint64_t u = uint64_t(key);
        const int64_t cam = int64_t(u >> (32 + tile_bits));
        const int64_t tile = int64_t((u >> 32) & ((uint64_t(1) << tile_bits) - 1));
        return cam * per_cam + tile;
    };
    const int64_t cur = tile_of(keys[k]);
    if (k == 0) {
        for (int64_t t = 0; t <= cur; ++t) offsets[t] = 0;
    } else {
        const int64_t prev = tile_of(keys[k - 1]);
        for (int64_t t = prev + 1; t <= cur; ++t) offsets[t] = int32_t(k);
    }
    if (k == n - 1) {
        for (int64_t t = cur + 1; t < n_tiles_total; ++t) offsets[t] = int32_t(n);
    }
}

size_t isect_sort_temp_bytes(int64_t n, int key_bits) {
    size_t bytes = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const uint64_t*)nullptr, (uint64_t*)nullptr, (const int32_t*)nullptr,
                                    (int32_t*)nullptr, n, 0, key_bits);
    return bytes;
}

template <typename T>
void isect_count_cuda(const TileGrid& g, int N, const T* means2d, const int32_t* radii, int32_t* tiles_per_gauss, void* stream) {
    const int64_t n = int64_t(g.C) * N;
    if (n == 0) return;
    launch(isect_count_kernel<T>, blocks_for(n), kThreads, 0, stream, g, N, means2d, radii, tiles_per_gauss);
}

template <typename T>
void isect_fill_sorted_cuda(const TileGrid& g, int N, const T* means2d, const int32_t* radii, const T* depths,
                            const int64_t* cum_tiles, int64_t n_isects, int64_t* keys_tmp, int32_t* ids_tmp,
                            void* sort_temp, size_t sort_temp_bytes, int key_bits, int64_t* isect_ids,
                            int32_t* flatten_ids, int32_t* isect_offsets, void* stream) {
    const int64_t per_cam = int64_t(g.tiles_w) * g.tiles_h;
    const int tile_bits = isect_key_bits(g.C, per_cam).tile;
    const int64_t n = int64_t(g.C) * N;
    launch(isect_emit_kernel<T>, blocks_for(n), kThreads, 0, stream, g, N, means2d, radii, depths, cum_tiles, tile_bits,
           keys_tmp, ids_tmp);
    // Radix sort is stable: equal depths keep Gaussian order, as on the CPU.
    cub::DeviceRadixSort::SortPairs(sort_temp, sort_temp_bytes, (const uint64_t*)keys_tmp, (uint64_t*)isect_ids,
                                    (const int32_t*)ids_tmp, flatten_ids, n_isects, 0, key_bits,
                                    static_cast<cudaStream_t>(stream));
    launch(tile_offsets_kernel, blocks_for(n_isects), kThreads, 0, stream, n_isects, (const int64_t*)isect_ids,
           int64_t(g.C) * per_cam, tile_bits, per_cam, isect_offsets);
}

template void isect_count_cuda<float>(const TileGrid&, int, const float*, const int32_t*, int32_t*, void*);
template void isect_count_cuda<double>(const TileGrid&, int, const double*, const int32_t*, int32_t*, void*);
template void isect_fill_sorted_cuda<float>(const TileGrid&, int, const float*, const int32_t*, const float*,
                                            const int64_t*, int64_t, int64_t*, int32_t*, void*, size_t, int, int64_t*,
                                            int32_t*, int32_t*, void*);
template void isect_fill_sorted_cuda<double>(const TileGrid&, int, const double*, const int32_t*, const double*,
                                             const int64_t*, int64_t, int64_t*, int32_t*, void*, size_t, int, int64_t*,
                                             int32_t*, int32_t*, void*);

}  // namespace gk
