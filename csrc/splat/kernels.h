// Launchers of the rasteriser stages, on raw pointers (no torch here, so the kernels compile fast).
// Each stage has one CPU file (*_cpu.cpp, OpenMP) and one CUDA file (*.cu); splat_ops.cpp checks the
// tensors and dispatches. Layouts (row-major, contiguous):
//   means [N,3], quats [N,4] (wxyz), scales [N,3], covars [N,6] (upper triangle) or null,
//   viewmats [C,4,4] (world to camera), Ks [C,3,3]; per camera-Gaussian outputs are [C,N,...].
#pragma once

#include <cstdint>

namespace gk {

struct ProjectionArgs {
    int C, N, width, height;
    double eps2d, near_plane, far_plane, radius_clip;  // double, so float64 runs see exact values
};

struct TileGrid {
    int C, tile_size, tiles_w, tiles_h, width, height;
};

// Tile sizes the kernels take: a CUDA block is one tile of whole warps (8x8 .. 32x32 pixels).
constexpr bool tile_size_supported(int tile_size) { return tile_size == 8 || tile_size == 16 || tile_size == 32; }
// Most colour channels of the CUDA rasteriser (per-thread accumulators in registers; rasterize.cu).
constexpr int kCudaMaxChannels = 32;

// Pointers of one stage's call, gathered once by the op (splat_ops.cpp) and handed to either backend.
template <typename T> struct ProjectionFwd {
    const T *means, *covars, *quats, *scales;  // covars, or quats and scales (the others null)
    const T *viewmats, *Ks;
    int32_t* radii;                            // outputs [C, N, ...]
    T *means2d, *depths, *conics, *comps;
};
template <typename T> struct ProjectionBwd {
    const T *means, *covars, *quats, *scales, *viewmats, *Ks;
    const int32_t* radii;
    const T *v_means2d, *v_depths, *v_conics, *v_comps;  // v_comps may be null
    T *v_means, *v_covars, *v_quats, *v_scales;          // zero-initialised; the unused ones null
};
// The binned splats both rasterise passes read: D channels, intersections sorted per tile.
template <typename T> struct Splats2D {
    int D;
    const T *means2d, *conics, *colors, *opacities, *backgrounds;  // backgrounds [C, D] or null
    const int32_t *isect_offsets, *flatten_ids;
    int64_t n_isects;
};
template <typename T> struct RasterizeFwdOut {
    T *render_colors, *render_alphas;
    int32_t* last_ids;
};
template <typename T> struct RasterizeBwd {
    const T* render_alphas;
    const int32_t* last_ids;
    const T *v_render_colors, *v_render_alphas;
    T *v_means2d, *v_means2d_abs, *v_conics, *v_colors, *v_opacities;  // zero-initialised; v_means2d_abs may be null
};


// ---- CPU ---------------------------------------------------------------------------------------------
template <typename T> void projection_fwd_cpu(const ProjectionArgs& a, const ProjectionFwd<T>& p);
template <typename T> void projection_bwd_cpu(const ProjectionArgs& a, const ProjectionBwd<T>& p);

template <typename T>
void sh_fwd_cpu(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t coeff_period, T* colors);
template <typename T>
void sh_bwd_cpu(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t coeff_period, const T* v_colors,
                T* v_coeffs, T* v_dirs);

// Counts the tiles each Gaussian touches (tiles_per_gauss [C,N]); returns the total.
template <typename T>
int64_t isect_count_cpu(const TileGrid& g, int N, const T* means2d, const int32_t* radii, int32_t* tiles_per_gauss);
// Fills the intersections grouped by (camera, tile), each tile's run sorted front to back (ties by index),
// and the per-tile start offsets [C, tiles_h, tiles_w].
template <typename T>
void isect_fill_sorted_cpu(const TileGrid& g, int N, const T* means2d, const int32_t* radii, const T* depths,
                           int64_t n_isects, int64_t* isect_ids, int32_t* flatten_ids, int32_t* isect_offsets);

template <typename T> void rasterize_fwd_cpu(const TileGrid& g, const Splats2D<T>& s, const RasterizeFwdOut<T>& o);
// Gradients per camera-Gaussian [C*N, ...]. (Tiles accumulate into per-intersection buffers, so they
// never write the same memory, then those are summed in order.)
template <typename T> void rasterize_bwd_cpu(const TileGrid& g, const Splats2D<T>& s, const RasterizeBwd<T>& b);

// ---- CUDA (compiled when GSPLAT_KIT_WITH_CUDA, or by the SIMT harness; device pointers; stream is a
// cudaStream_t). Launch errors are checked by the caller (splat_ops.cpp). -------------------------------
template <typename T> void projection_fwd_cuda(const ProjectionArgs& a, const ProjectionFwd<T>& p, void* stream);
template <typename T> void projection_bwd_cuda(const ProjectionArgs& a, const ProjectionBwd<T>& p, void* stream);
template <typename T>
void sh_fwd_cuda(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t coeff_period, T* colors, void* stream);
template <typename T>
void sh_bwd_cuda(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t coeff_period, const T* v_colors,
                 T* v_coeffs, T* v_dirs, void* stream);
template <typename T>
void isect_count_cuda(const TileGrid& g, int N, const T* means2d, const int32_t* radii, int32_t* tiles_per_gauss, void* stream);
// cum_tiles: inclusive prefix sum of tiles_per_gauss. Emits unsorted keys, then sorts them with CUB's
// radix sort (temp storage from the caller: isect_sort_temp_bytes), then finds the tile offsets.
size_t isect_sort_temp_bytes(int64_t n_isects, int key_bits);
template <typename T>
void isect_fill_sorted_cuda(const TileGrid& g, int N, const T* means2d, const int32_t* radii, const T* depths,
                            const int64_t* cum_tiles, int64_t n_isects, int64_t* keys_tmp, int32_t* ids_tmp,
                            void* sort_temp, size_t sort_temp_bytes, int key_bits, int64_t* isect_ids,
                            int32_t* flatten_ids, int32_t* isect_offsets, void* stream);
template <typename T>
void rasterize_fwd_cuda(const TileGrid& g, const Splats2D<T>& s, const RasterizeFwdOut<T>& o, void* stream);
// Accumulates (atomically) into the per camera-Gaussian gradients.
template <typename T>
void rasterize_bwd_cuda(const TileGrid& g, const Splats2D<T>& s, const RasterizeBwd<T>& b, void* stream);

}  // namespace gk
