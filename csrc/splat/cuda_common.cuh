// Helpers shared by the rasteriser's CUDA files (launch geometry, warp sums).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gk_launch.cuh"

namespace gk {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

// Sum over the 32 lanes of a full warp (every lane calls it; lane 0 holds the total).
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

}  // namespace gk
