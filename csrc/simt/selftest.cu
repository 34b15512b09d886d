// Kernels that check the SIMT harness itself (tests/test_simt_runtime.py): what barriers, votes,
// shuffles and atomics return, and that the classic GPU bugs fail the launch instead of hanging.
// Harness-only: registered as torch.ops.gsplat_kit_simt.selftest(name) -> int64 tensor.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "gk_launch.cuh"

namespace gk::simt_selftest {
namespace {

constexpr int kCols = 8;  // values recorded per thread

__device__ int linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// Block barriers: each thread publishes a value in shared memory, then reads its neighbour's after the
// barrier; the counting / and / or barriers reduce a predicate over the block.
__global__ void barriers_kernel(int64_t* out) {
    GK_DYNAMIC_SHARED(int64_t, vals);
    const int t = linear_tid(), n = blockDim.x * blockDim.y * blockDim.z;
    vals[t] = 100 * t + blockIdx.x;
    __syncthreads();
    int64_t* o = out + (int64_t(blockIdx.x) * n + t) * kCols;
    o[0] = vals[(t + 1) % n];
    o[1] = __syncthreads_count(t % 3 == 0);
    o[2] = __syncthreads_and(t < n);
    o[3] = __syncthreads_and(t != 5);
    o[4] = __syncthreads_or(t == n - 1);
    o[5] = __syncthreads_or(false);
    o[6] = threadIdx.y;
    o[7] = threadIdx.x;
}

// Warp shuffles and votes over full warps.
__global__ void warp_kernel(int64_t* out) {
    const int t = threadIdx.x, lane = t % 32;
    int64_t* o = out + int64_t(t) * kCols;
    double v = lane + 1;
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    o[0] = int64_t(v);                                               // lane 0: 1 + ... + 32 = 528
    int x = lane;
    for (int m = 1; m < 32; m *= 2) x += __shfl_xor_sync(0xffffffffu, x, m);
    o[1] = x;                                                        // every lane: 0 + ... + 31 = 496
    o[2] = __shfl_up_sync(0xffffffffu, lane * 10, 3);               // lane - 3, or own below 3
    o[3] = __shfl_sync(0xffffffffu, lane * 7, 5);                   // lane 5's value
    o[4] = __any_sync(0xffffffffu, lane == 31 && t >= 32);          // only the second warp
    o[5] = __all_sync(0xffffffffu, lane < 32);
    o[6] = __ballot_sync(0xffffffffu, lane % 4 == 0);
    o[7] = lane < 16 ? __shfl_down_sync(0x0000ffffu, lane, 4, 16) : -1;  // half a warp, one 16-lane segment
}

__global__ void atomics_kernel(int64_t* out) {
    atomicAdd(reinterpret_cast<unsigned long long*>(out), 1ull);
    atomicMax(reinterpret_cast<long long*>(out + 1), (long long)(blockIdx.x * 1000 + threadIdx.x));
}

// ---- deliberate bugs: each must fail the launch with a message ---------------------------------------
__global__ void early_return_kernel(int64_t* out) {
    if (threadIdx.x >= 40) return;  // these threads never reach the barrier
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void shuffle_kernel(int64_t* out) {  // a full-warp mask, launched with fewer than 32 threads
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, int(threadIdx.x), 1);
}

__global__ void exited_lane_kernel(int64_t* out) {
    if (threadIdx.x < 16) return;
    out[threadIdx.x] = __any_sync(0xffffffffu, 1);
}

__global__ void shared_oob_kernel(int64_t* out) {
    GK_DYNAMIC_SHARED(float, buf);  // 64 floats
    buf[threadIdx.x * 2] = 1.f;       // threads 32.. write past the end
    __syncthreads();
    out[threadIdx.x] = int64_t(buf[threadIdx.x]);
}

__global__ void divergent_barrier_kernel(int64_t* out) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

__global__ void outside_mask_kernel(int64_t* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, int(threadIdx.x), 8);  // lanes 8.. read 16..
}

__global__ void noop_kernel(int64_t*) {}

at::Tensor selftest(std::string which) {
    std::vector<int64_t> out(1 << 12, 0);
    int64_t* o = out.data();
    int64_t n = 0;
    if (which == "barriers") {
        const dim3 block(32, 3);
        gk::launch(barriers_kernel, 2, block, 96 * sizeof(int64_t), nullptr, o);
        n = 2 * 96 * kCols;
    } else if (which == "warp") {
        gk::launch(warp_kernel, 1, 64, 0, nullptr, o);
        n = 64 * kCols;
    } else if (which == "atomics") {
        gk::launch(atomics_kernel, 5, 64, 0, nullptr, o);
        n = 2;
    } else if (which == "early_return") {
        gk::launch(early_return_kernel, 1, 64, 0, nullptr, o);
    } else if (which == "inactive_lanes") {
        gk::launch(shuffle_kernel, 1, 16, 0, nullptr, o);
    } else if (which == "exited_lane") {
        gk::launch(exited_lane_kernel, 1, 32, 0, nullptr, o);
    } else if (which == "shared_oob") {
        gk::launch(shared_oob_kernel, 1, 64, 64 * sizeof(float), nullptr, o);
    } else if (which == "divergent_barrier") {
        gk::launch(divergent_barrier_kernel, 1, 64, 0, nullptr, o);
    } else if (which == "outside_mask") {
        gk::launch(outside_mask_kernel, 1, 32, 0, nullptr, o);
    } else if (which == "too_many_threads") {
        gk::launch(noop_kernel, 1, 2048, 0, nullptr, o);
    } else if (which == "too_much_shared") {
        gk::launch(noop_kernel, 1, 32, size_t(64) << 10, nullptr, o);
    } else {
        throw std::invalid_argument("selftest: unknown case " + which);
    }
    return at::tensor(std::vector<int64_t>(out.begin(), out.begin() + n), at::kLong);
}

}  // namespace
}  // namespace gk::simt_selftest

TORCH_LIBRARY_FRAGMENT(gsplat_kit_simt, m) {
    m.def("selftest(str name) -> Tensor", &gk::simt_selftest::selftest);
}
