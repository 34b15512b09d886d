// Tile binning on the CPU. Instead of one global sort of (camera | tile | depth) keys, a counting sort
// groups the intersections by (camera, tile) in Gaussian order, then each tile's run is sorted by depth
// in parallel: the same order a stable radix sort of the full keys gives (ties by Gaussian index).
#include <algorithm>
#include <vector>

#include "gk_blend.h"
#include "kernels.h"

namespace gk {

template <typename T>
int64_t isect_count_cpu(const TileGrid& g, int N, const T* means2d, const int32_t* radii, int32_t* tiles_per_gauss) {
    int64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t i = 0; i < int64_t(g.C) * N; ++i) {
        int32_t n_tiles = 0;
        if (radii[i * 2] > 0 || radii[i * 2 + 1] > 0) {
            int x0, x1, y0, y1;
            tile_range(means2d[i * 2], means2d[i * 2 + 1], radii[i * 2], radii[i * 2 + 1], g.tile_size, g.tiles_w,
                       g.tiles_h, x0, x1, y0, y1);
            n_tiles = (x1 - x0) * (y1 - y0);
        }
        tiles_per_gauss[i] = n_tiles;
        total += n_tiles;
    }
    return total;
}

template <typename T>
void isect_fill_sorted_cpu(const TileGrid& g, int N, const T* means2d, const int32_t* radii, const T* depths,
                           int64_t n_isects, int64_t* isect_ids, int32_t* flatten_ids, int32_t* isect_offsets) {
    const int64_t n_tiles = int64_t(g.tiles_w) * g.tiles_h;
    const int tile_bits = isect_key_bits(g.C, n_tiles).tile;
    // 1. intersections per (camera, tile); 2. exclusive scan -> offsets
    std::vector<int64_t> cursor(int64_t(g.C) * n_tiles + 1, 0);
    for (int64_t i = 0; i < int64_t(g.C) * N; ++i) {
        if (radii[i * 2] <= 0 && radii[i * 2 + 1] <= 0) continue;
        int x0, x1, y0, y1;
        tile_range(means2d[i * 2], means2d[i * 2 + 1], radii[i * 2], radii[i * 2 + 1], g.tile_size, g.tiles_w, g.tiles_h,
                   x0, x1, y0, y1);
        int64_t base = (i / N) * n_tiles;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) ++cursor[base + int64_t(y) * g.tiles_w + x + 1];
    }
    for (int64_t t = 0; t < int64_t(g.C) * n_tiles; ++t) {
        cursor[t + 1] += cursor[t];
        isect_offsets[t] = int32_t(cursor[t]);
    }
    // 3. scatter in Gaussian order
    for (int64_t i = 0; i < int64_t(g.C) * N; ++i) {
        if (radii[i * 2] <= 0 && radii[i * 2 + 1] <= 0) continue;
        int x0, x1, y0, y1;
        tile_range(means2d[i * 2], means2d[i * 2 + 1], radii[i * 2], radii[i * 2 + 1], g.tile_size, g.tiles_w, g.tiles_h,
                   x0, x1, y0, y1);
        int64_t cam = i / N;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) {
                int64_t tile = int64_t(y) * g.tiles_w + x;
                int64_t k = cursor[cam * n_tiles + tile]++;
                isect_ids[k] = int64_t(isect_key(cam, tile, float(depths[i]), tile_bits));
                flatten_ids[k] = int32_t(i);
            }
    }
    // 4. sort each tile's run by key (stable: equal depths keep Gaussian order)
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t t = 0; t < int64_t(g.C) * n_tiles; ++t) {
        int64_t s = isect_offsets[t], e = (t + 1 < int64_t(g.C) * n_tiles) ? isect_offsets[t + 1] : n_isects;
        if (e - s < 2) continue;
        std::vector<std::pair<int64_t, int32_t>> run(e - s);
        for (int64_t k = s; k < e; ++k) run[k - s] = {isect_ids[k], flatten_ids[k]};
        std::stable_sort(run.begin(), run.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        for (int64_t k = s; k < e; ++k) {
            isect_ids[k] = run[k - s].first;
            flatten_ids[k] = run[k - s].second;
        }
    }
}

template int64_t isect_count_cpu<float>(const TileGrid&, int, const float*, const int32_t*, int32_t*);
template int64_t isect_count_cpu<double>(const TileGrid&, int, const double*, const int32_t*, int32_t*);
template void isect_fill_sorted_cpu<float>(const TileGrid&, int, const float*, const int32_t*, const float*, int64_t,
                                           int64_t*, int32_t*, int32_t*);
template void isect_fill_sorted_cpu<double>(const TileGrid&, int, const double*, const int32_t*, const double*, int64_t,
                                            int64_t*, int32_t*, int32_t*);

}  // namespace gk
